"""``caspl inspect FILE``: print an artifact's metadata, tensor shapes and content-hash status."""
from __future__ import annotations

import argparse
import json
from typing import Any, Iterator

from caspl_plugin.cli import CommandError

_SHOWN_CLASS_NAMES = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="artifact (.safetensors) written by caspl-plugin, or a teacher-view cache folder")
    parser.add_argument("--json", action="store_true", help="print the metadata document as JSON")


def _lines(metadata: dict, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, text) pairs, nested objects flattened and class names summarised."""
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _lines(value, f"{name}.")
        elif key == "class_names" and isinstance(value, list):
            shown = ", ".join(map(str, value[:_SHOWN_CLASS_NAMES]))
            more = f", ... (+{len(value) - _SHOWN_CLASS_NAMES})" if len(value) > _SHOWN_CLASS_NAMES else ""
            yield name, f"{len(value)}: {shown}{more}"
        else:
            yield name, value if isinstance(value, str) else json.dumps(value)


def format_report(path: str, tensors: dict[str, Any], metadata: dict, hash_ok: bool) -> str:
    rows = list(_lines({key: value for key, value in metadata.items() if key != "content_sha256"}))
    for name, tensor in sorted(tensors.items()):
        rows.append((f"tensor.{name}", f"{list(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"))
    rows.append(("content_sha256", f"{metadata.get('content_sha256')} ({'ok' if hash_ok else 'MISMATCH'})"))
    width = max(len(key) for key, _ in rows)
    return "\n".join([path] + [f"  {key.ljust(width)} : {text}" for key, text in rows])


def run(args: argparse.Namespace) -> int:
    from caspl_plugin.artifacts import content_hash, load_artifact

    from pathlib import Path

    if Path(args.file).is_dir():  # a teacher-view cache folder
        from caspl_plugin.cache.store import INDEX_FILE, describe_cache

        if args.json:
            print((Path(args.file) / INDEX_FILE).read_text(encoding="utf-8"))
        else:
            print(describe_cache(args.file))
        return 0

    tensors, metadata = load_artifact(args.file, verify=False)
    hash_ok = metadata.get("content_sha256") == content_hash(tensors)
    if args.json:
        print(json.dumps(metadata, indent=2, ensure_ascii=False))
    else:
        print(format_report(args.file, tensors, metadata, hash_ok))
    if not hash_ok:
        raise CommandError(f"{args.file}: content hash MISMATCH: the tensors were modified after the file was written")
    return 0
