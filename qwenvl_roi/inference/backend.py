"""The scoring-backend seam: what the greedy-consistent scorer needs from a model, and a registry of backends.

The scorer (scoring.py) never touches a model. It asks for *passes* (`Pass`): for one sample, a whole token
sequence (the prompt, image placeholder tokens already expanded, plus answer tokens) with its images, and
at some positions of it the next-token values of a few candidate token ids. It gets back, per pass,
``{position: {token id: value}}``. Only differences between the values of one position matter (the scorer
renormalises over the candidates of a branch with a softmax and takes the highest for the greedy word), so a
backend may return raw logits or log-probabilities. That is all a backend must do (`ScoringBackend`), plus
greedy decoding for ``--mode generate``.

Why this seam: the HF backend (backends/hf.py, the first one, "hf") runs transformers with LLaMA-Factory's
training collator and cuts its KV cache at a token; users who serve with vLLM or SGLang need the same
scores there, and the next backend should be one module plus one line in ``BACKENDS`` that passes the
conformance test (tests/inference/test_reference.py runs every registered backend against LLaMA-Factory's own
pipeline, brute force).

Nothing at the boundary is HF-specific: token ids are ints, images are file paths or in-memory PIL
pictures, values are floats, device and dtype are strings. The cache hints (`Request.cut`, `commit`,
`ScoringBackend.release`) let a backend re-use a sample's prefix; a backend without a cache of its own may
ignore them, since every `Request` carries its whole sequence.

How a vLLM backend maps onto it (not implemented: vLLM is not installed here and needs a GPU):

- ``load``: ``LLM(model, dtype=..., enable_prefix_caching=True)`` (the adapter through ``enable_lora`` and
  a ``LoRARequest``), the image pixel limits from ``encoder.meta`` (``image_max_pixels`` /
  ``image_min_pixels`` as ``mm_processor_kwargs``), so the image becomes the same number of placeholder tokens
  as in ``Request.ids`` (the conformance test catches a resize that differs from LLaMA-Factory's);
- ``score``: every pass becomes a prompt of token ids ``{"prompt_token_ids": ids, "multi_modal_data":
  {"image": images}}`` with ``SamplingParams(max_tokens=1, prompt_logprobs=1)``. vLLM's prompt logprobs
  give, at index i, log P(ids[i] | ids[:i]) for the token actually there, so the value of candidate ``t`` at
  position ``p`` is read from a prompt whose token ``p + 1`` is ``t``: ``ids`` itself when ``ids[p + 1] ==
  t``, otherwise the prompt + candidate continuation ``ids[:p + 1] + [t]`` (its last prompt logprob).
  Automatic prefix caching makes these extra prompts cost one token each, image included, which is what
  ``cut`` asks for; ``commit`` and ``release`` need nothing. Log-probs instead of logits change no score:
  every value of one position comes from the same distribution (one shift per position);
- ``generate``: ``SamplingParams(temperature=0, max_tokens=max_new_tokens, stop_token_ids=stop)`` on the
  same prompts; the generated ids, ending with the stop token where one was reached.

SGLang maps the same way (``input_ids`` + ``image_data``, ``return_logprob`` from ``logprob_start_len``;
its ``token_ids_logprob`` can ask for the candidate ids directly). Registering it: one entry in
``BACKENDS`` (or ``register_backend``), and the conformance test runs it, or skips it with
`ScoringBackend.unavailable`'s reason where it cannot run (not installed, no GPU).
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from qwenvl_roi.inference.encode import Prompt, PromptEncoder

#: an image of a prompt: a file path, or an in-memory PIL picture (detector inputs converted as for training)
ImageInput = Any
#: per requested position, the value (logit or log-prob) of each candidate token id
Values = dict[int, dict[int, float]]


class BackendError(ValueError):
    """An unknown backend name, or a backend registered twice."""


@dataclass(frozen=True)
class Request:
    """One model pass of one sample, as the scorer asks for it.

    ``ids``: the whole sequence (prompt with the image placeholder tokens expanded, answer tokens so far).
    ``want``: ``(position, candidate token ids)`` pairs: the values at ``position`` predict the token after
    it, so ``position < len(ids)`` (the last position asks what follows the sequence).
    ``cut``: ``ids[:cut]`` equals the start of the sample's committed sequence (0: nothing shared), so a
    backend with a cache may re-use it and run only ``ids[cut:]``. ``commit``: ``ids`` becomes the sample's
    committed sequence (the scorer's later passes cut into it).
    """

    ids: tuple[int, ...]
    want: tuple[tuple[int, tuple[int, ...]], ...]
    cut: int = 0
    commit: bool = False


@dataclass(frozen=True)
class Pass:
    """A `Request` with the sample it belongs to (any hashable key, unique among live samples) and its
    images, in prompt order."""

    sample: Hashable
    images: tuple[ImageInput, ...]
    request: Request


@runtime_checkable
class ScoringBackend(Protocol):
    """What the scorer needs from a model. One instance holds one model on one device.

    Batch semantics: one `score` call holds the passes the predictor can run together (the first passes of a
    batch of samples, or their continuations), of different lengths; the backend may group them as it likes,
    but the values must not depend on the grouping beyond float noise (1e-5) and must be the same for the
    same call (a resumed job is byte-identical to an uninterrupted one only if they are).
    """

    #: the registry name ("hf")
    name: ClassVar[str]
    #: where the numbers are computed ("cpu", "cuda:0"): its type is part of a resumed job's fingerprint
    device: str
    #: the compute dtype ("float32", "bfloat16", "float16"): part of the fingerprint, like the device
    dtype: str

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backend cannot run on this machine (not installed, no GPU), or None when it can."""
        ...

    @classmethod
    def load(
        cls,
        model: str,
        adapter: str | None,
        encoder: PromptEncoder,
        device: str | None = None,
        dtype: str | None = None,
    ) -> ScoringBackend:
        """The model (``adapter``: a LoRA adapter folder on it) ready to score prompts `encoder` builds
        (its tokenizer, processor, LLaMA-Factory template and dataset meta: the pixel limits). ``device`` /
        ``dtype`` None: the backend's choice (a GPU with bfloat16 when there is one)."""
        ...

    def score(self, passes: Sequence[Pass]) -> list[Values]:
        """One ``{position: {token id: value}}`` per pass, for exactly the wanted positions and ids."""
        ...

    def release(self, sample: Hashable) -> None:
        """The sample is scored: drop what is kept for it (its key may be used again for another one)."""
        ...

    def generate(
        self, prompts: Sequence[Prompt], max_new_tokens: int, stop: Collection[int]
    ) -> list[list[int]]:
        """Greedy decoding of each prompt (its ``ids`` and ``images``): the generated ids, the stop token
        included when one was reached."""
        ...


#: the built-in backends: name -> "module:class", imported when asked for (no torch at import time)
BACKENDS: dict[str, str] = {"hf": "qwenvl_roi.inference.backends.hf:HFBackend"}
_registry: dict[str, str | type[ScoringBackend]] = dict(BACKENDS)
DEFAULT_BACKEND = "hf"


def register_backend(name: str, backend: str | type[ScoringBackend], replace: bool = False) -> None:
    """Make a backend available by name (as LLaMA-Factory's ``infer_backend`` picks hf / vllm / sglang):
    the class, or ``"module:class"`` to import it only when used. A name is registered once unless
    ``replace``."""
    if name in _registry and not replace:
        raise BackendError(f"scoring backend {name!r} is already registered")
    _registry[name] = backend


def unregister_backend(name: str) -> None:
    """Remove a registered backend (tests register temporary ones)."""
    _registry.pop(name, None)


def backend_names() -> list[str]:
    """Every registered backend name, built-ins first."""
    return list(_registry)


def get_backend(name: str) -> type[ScoringBackend]:
    """The backend class registered as ``name`` (imported on first use)."""
    entry = _registry.get(name)
    if entry is None:
        raise BackendError(f"unknown scoring backend {name!r} (registered: {', '.join(_registry)})")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        _registry[name] = entry
    return entry
