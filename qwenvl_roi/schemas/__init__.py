"""The file contracts: one pydantic model per file the project writes and reads, and its JSON Schema.

Why: each file is an interface between commands (prepare -> build-sft, predict, eval, preview; predict ->
eval; eval -> predict and the demo). One model per file, used by its writer and by every reader, says what
the file holds field by field; its JSON Schema (draft 2020-12, generated from the model: ``json_schema``,
`qwenvl-roi schema NAME`, docs/schemas/) lets any other tool check the files too. Each contract has a
format version: bump it when a change would break an old reader or an old file.

Models are imported only when asked for (``Schema.model``): the converters import this package for
``DatasetMeta`` and must not pay for the other contracts, nor import them in a cycle.

After changing a model regenerate the published schemas:
``python -m qwenvl_roi.schemas --write docs/schemas``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenvl_roi.errors import ContractError

DRAFT = "https://json-schema.org/draft/2020-12/schema"
README = "README.md"
WRITE_COMMAND = "python -m qwenvl_roi.schemas --write docs/schemas"


@dataclass(frozen=True)
class Schema:
    """One file contract: which files, its model, its format version, and who writes and reads it."""

    name: str
    files: str
    target: str  # "module:attribute" of the model or annotated union
    version: int
    about: str
    written_by: str
    read_by: str

    def model(self) -> Any:
        """The pydantic model (or annotated union of models) of one record of the file."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def adapter(self) -> Any:
        """The TypeAdapter that validates one record (a JSON line, or the whole JSON file); built once."""
        if self.name not in _ADAPTERS:
            from pydantic import TypeAdapter

            _ADAPTERS[self.name] = TypeAdapter(self.model())
        return _ADAPTERS[self.name]


_ADAPTERS: dict[str, Any] = {}


def errors_text(exc: Any) -> str:
    """A pydantic ValidationError in one line: ``regions.0.box: List should have at least 4 items; ...``."""
    return "; ".join(
        f"{'.'.join(str(x) for x in err['loc']) or '(record)'}: {err['msg']}" for err in exc.errors()
    )


def check_record(name: str, record: Any) -> None:
    """Validate one record a writer is about to write against the named contract (ContractError if not)."""
    check_records(name, (record,))


def check_records(name: str, records: Iterable[Any]) -> None:
    """Validate every record a writer is about to write against the named contract (ContractError at the
    first that breaks it)."""
    from pydantic import ValidationError

    validate = get(name).adapter().validate_python
    for record in records:
        try:
            validate(record)
        except ValidationError as exc:
            raise ContractError(
                f"a {name} record breaks its contract (qwenvl_roi/schemas): {errors_text(exc)}"
            ) from None


SCHEMAS: dict[str, Schema] = {
    s.name: s
    for s in (
        Schema(
            "regions",
            "regions_{train,val,test}.jsonl",
            "qwenvl_roi.schemas.regions:RegionSample",
            1,
            "One JSON object a line: a sample (one prompt) with its image and candidate regions and their "
            "gold verdicts.",
            "`qwenvl-roi prepare` / `convert`",
            "`build-sft`, `predict --regions`, `eval` (`--gold`, `--val-gold`), `preview`",
        ),
        Schema(
            "predictions",
            "predictions .jsonl of `qwenvl-roi predict`",
            "qwenvl_roi.schemas.predictions:PredictionRow",
            1,
            "One JSON object a line, of one of four kinds told apart by their keys: a regions sample scored "
            "(`predict --regions`), a regions sample answered by generation (`--mode generate`), a detector "
            "image scored (`predict --boxes`), or a detector input that could not be scored.",
            "`qwenvl-roi predict`",
            "`eval` (`--predictions`, `--val-predictions`: the two `--regions` kinds)",
        ),
        Schema(
            "metrics",
            "metrics.json",
            "qwenvl_roi.schemas.metrics:Metrics",
            1,
            "ROI- and image-level figures of one evaluation at one threshold (keys sorted).",
            "`qwenvl-roi eval`",
            "the demo's report",
        ),
        Schema(
            "prepare_report",
            "prepare_report.json",
            "qwenvl_roi.schemas.prepare_report:PrepareReport",
            2,
            "Every input file and box accounted for, every problem with its file and line.",
            "`qwenvl-roi prepare` / `convert`",
            "`preview` (problems and near-duplicate sets shown on the pages); the demo's report; people",
        ),
        Schema(
            "dataset_meta",
            "dataset_meta.json",
            "qwenvl_roi.schemas.dataset_meta:DatasetMeta",
            1,
            "Everything needed to rebuild a prompt exactly: model family, pixel limits, prompt texts and "
            "words, canonical labels. The file carries its format version as `version`.",
            "`qwenvl-roi prepare` / `convert` (`build-sft` when the prompt settings changed); `eval "
            "--model-dir` copies it beside the model",
            "`build-sft`, `predict`, the Python API, `eval`, `preview`, the training plugin",
        ),
        Schema(
            "inference_config",
            "qwenvl_roi_inference.json",
            "qwenvl_roi.schemas.inference_config:InferenceConfig",
            1,
            "The decision threshold `eval` chose (on validation, given, or the default 0.5).",
            "`qwenvl-roi eval` (into `--out` and every `--model-dir`)",
            "`predict`, the Python API",
        ),
    )
}


def _generator() -> type:
    from pydantic.json_schema import GenerateJsonSchema

    class Generator(GenerateJsonSchema):
        """Pydantic's draft 2020-12 generator without the per-property titles it derives from field names
        (noise next to the descriptions)."""

        def field_title_should_be_set(self, schema: Any) -> bool:
            return False

    return Generator


def get(name: str) -> Schema:
    """The contract of that name; KeyError names the known ones."""
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown schema {name!r}; one of: {', '.join(SCHEMAS)}") from None


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one record of the named file."""
    s = get(name)
    body = s.adapter().json_schema(schema_generator=_generator(), mode="validation")
    head = {
        "$schema": DRAFT,
        "title": f"{s.name}: {s.files}",
        "description": f"{s.about} Written by {s.written_by}; read by {s.read_by}.",
        "x-format-version": s.version,
    }
    return {**head, **{k: v for k, v in body.items() if k not in ("title", "description")}}


def schema_text(name: str) -> str:
    """The JSON Schema as published: indented JSON, UTF-8 characters kept, final newline."""
    return json.dumps(json_schema(name), indent=2, ensure_ascii=False) + "\n"


def published_files() -> dict[str, str]:
    """File name -> text of everything docs/schemas holds: one schema per contract and the README."""
    from .docs import readme_text

    files = {f"{name}.schema.json": schema_text(name) for name in SCHEMAS}
    files[README] = readme_text({name: json_schema(name) for name in SCHEMAS})
    return files


def write_published(folder: str | Path) -> list[Path]:
    """Write the published files into ``folder`` (created if needed); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for file_name, text in published_files().items():
        path = folder / file_name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def stale_published(folder: str | Path) -> list[str]:
    """Published files in ``folder`` that are missing or differ from what the models generate now."""
    folder = Path(folder)
    stale = []
    for file_name, text in published_files().items():
        path = folder / file_name
        if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
            stale.append(file_name)
    return stale
