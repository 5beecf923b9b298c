"""Repack a bitsandbytes wheel with only the native libraries one machine needs.

Why: the bitsandbytes 0.50.2 manylinux wheel is 43 MB because it carries one CUDA library per CUDA
release (and ROCm/XPU ones); a device call carries at most 64 MiB in all. The GPU machine's PyTorch is
built for CUDA 13.0, so libbitsandbytes_cuda130.so (plus the CPU one for dry runs) is all it loads; the
rest is dropped and RECORD rewritten, so pip installs the result like the original.

Usage: python bench/gpu/slim_bnb.py WHEEL OUT_DIR [--keep cuda130,cuda132,cpu]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

_LIB = re.compile(r"libbitsandbytes_([a-z]+\d*)\.(so|dll|dylib)$")


def slim(wheel: Path, out_dir: Path, keep: set[str]) -> Path:
    """Write `out_dir/<same name>` without the native libraries whose tag is not in `keep`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        record = next((n for n in names if n.endswith(".dist-info/RECORD")), None)
        if record is None:
            raise SystemExit(f"{wheel}: no .dist-info/RECORD; not a wheel")
        kept_libs = [n for n in names if (m := _LIB.search(n)) and m.group(1) in keep]
        if not any("cuda" in n for n in kept_libs):
            raise SystemExit(f"{wheel}: none of the CUDA libraries {sorted(keep)} is in the wheel")
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{wheel.name}.")
        os.close(fd)
        rows = []
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                name = info.filename
                m = _LIB.search(name)
                if name == record or (m and m.group(1) not in keep):
                    continue
                data = src.read(name)
                dst.writestr(info, data)
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                rows.append(f"{name},sha256={digest},{len(data)}")
            rows.append(f"{record},,")
            dst.writestr(record, "\n".join(rows) + "\n")
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--keep", default="cuda130,cuda132,cpu", help="library tags to keep (default cuda130,cuda132,cpu)"
    )
    ns = p.parse_args(argv)
    out = slim(ns.wheel, ns.out_dir, {k.strip() for k in ns.keep.split(",") if k.strip()})
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB (was {ns.wheel.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
