"""Write one PACS domain as a user's own image folder: ``OUT/{train,test}/<class>/<name>.png``.

    python scripts/pacs_folder.py OUT [--domain photo] [--archive PATH]

The README's "Your data to a microcontroller-sized device" walk starts from a folder of
photographs sorted into class folders, the layout a user's camera roll ends up in. PACS's
``photo`` domain (1,670 real photographs, 7 classes: dog, elephant, giraffe, guitar, horse, house,
person; 32x32 RGB) is such a folder that is already on this machine next to the quickstart's own
data (``../shared/datasets/pacs32.tar.gz``, no download). The split is PACS's official one
(``index.csv``: its train list -> ``train/``, its val list -> ``test/``: 1,499 / 171 photos).
The PNG files are copied byte for byte (stdlib only: no Pillow, no entropi). ``OUT`` must not
exist; the folder is written beside it under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import sys
import tarfile
from pathlib import Path

__all__ = ["DOMAINS", "write_domain_folder"]

DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
_SPLIT_FOLDER = {"train": "train", "val": "test"}  # PACS's split -> the folder a user names
_DEFAULT_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared/datasets/pacs32.tar.gz"


def _index_rows(tar: tarfile.TarFile, domain: str) -> dict[str, tuple[str, str]]:
    """``{member name: (split folder, class)}`` of ``domain``'s rows in ``pacs32/index.csv``."""
    member = tar.extractfile("pacs32/index.csv")
    if member is None:
        raise ValueError("pacs32/index.csv is not a regular file in the archive")
    rows = {}
    for row in csv.DictReader(io.TextIOWrapper(member, encoding="utf-8")):
        if row["domain"] != domain:
            continue
        parts = row["path"].split("/")
        if len(parts) != 3 or any(p in ("", ".", "..") for p in parts) or parts[0] != domain:
            raise ValueError(f"index.csv row with an unexpected path: {row['path']!r}")
        rows[f"pacs32/{row['path']}"] = (_SPLIT_FOLDER[row["split"]], row["class"])
    if not rows:
        raise ValueError(f"index.csv has no images of domain {domain!r}")
    return rows


def write_domain_folder(archive: str | os.PathLike, out: str | os.PathLike, domain: str) -> dict:
    """Write ``domain`` of the PACS archive as ``out/{train,test}/<class>/*.png``; return counts."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"{out} exists: give a new folder")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    counts: dict[str, dict[str, int]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            rows = _index_rows(tar, domain)
            for member in tar:
                if member.name not in rows:
                    continue
                if not member.isfile():
                    raise ValueError(f"{member.name} is not a regular file in the archive")
                split, cls = rows.pop(member.name)
                dest = tmp / split / cls / Path(member.name).name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(member).read())
                counts.setdefault(split, {}).setdefault(cls, 0)
                counts[split][cls] += 1
        if rows:
            raise ValueError(f"{len(rows)} images of index.csv are missing, e.g. {min(rows)}")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def main(argv: list[str] | None = None) -> dict:
    """Command line: write the folder, print one line per split (images, classes)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", help="folder to write (must not exist)")
    ap.add_argument("--domain", choices=DOMAINS, default="photo", help="PACS domain (photo)")
    ap.add_argument("--archive", default=str(_DEFAULT_ARCHIVE), help="pacs32.tar.gz (%(default)s)")
    args = ap.parse_args(argv)
    if not Path(args.archive).is_file():
        ap.exit(2, f"error: no PACS archive at {args.archive}: pass --archive PATH\n")
    try:
        counts = write_domain_folder(args.archive, args.out, args.domain)
    except (OSError, ValueError, tarfile.TarError) as exc:
        ap.exit(2, f"error: {exc}\n")
    for split in sorted(counts):
        n = sum(counts[split].values())
        print(f"{args.out}/{split}: {n} images in {len(counts[split])} class folders")
    return counts


if __name__ == "__main__":
    main(sys.argv[1:])
