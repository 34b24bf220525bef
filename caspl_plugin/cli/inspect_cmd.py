"""``caspl inspect FILE``: print an artifact's metadata, tensor shapes, content-hash status and the
result of its per-kind validation; the same for an exported classifier (``.onnx``: metadata, graph
input/output, digest, validation against the graph) and a teacher-view cache folder (index, shards'
digests); exits non-zero on any inconsistency."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator, Optional

from caspl_plugin.cli.common import CommandError

_SHOWN_CLASS_NAMES = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="artifact (.safetensors) written by caspl-plugin, an exported classifier (.onnx), "
                                     "or a teacher-view cache folder")
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


def format_report(path: str, tensors: dict[str, Any], metadata: dict, hash_ok: bool,
                  notice: Optional[str] = None, problems: Optional[list[str]] = None) -> str:
    hidden = ("content_sha256", "content_sha256_covers")
    rows = list(_lines({key: value for key, value in metadata.items() if key not in hidden}))
    for name, tensor in sorted(tensors.items()):
        rows.append((f"tensor.{name}", f"{list(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"))
    covers = "metadata+tensors" if notice is None else "tensors only"
    rows.append(("content_sha256", f"{metadata.get('content_sha256')} ({'ok' if hash_ok else 'MISMATCH'}, {covers})"))
    if notice:
        rows.append(("notice", notice))
    if problems is not None:
        rows.append(("validation", "ok" if not problems else f"{len(problems)} problem(s)"))
        rows.extend(("  problem", problem) for problem in problems)
    width = max(len(key) for key, _ in rows)
    return "\n".join([path] + [f"  {key.ljust(width)} : {text}" for key, text in rows])


def inspect_artifact(file: str, as_json: bool) -> int:
    """Print one artifact's report (or its metadata as JSON); CommandError on any inconsistency."""
    from caspl_plugin.artifacts.store import hash_status, load_artifact
    from caspl_plugin.validation import validate_artifact

    tensors, metadata = load_artifact(file, verify=False)
    status = hash_status(tensors, metadata)
    problems = validate_artifact(file, tensors, metadata) if status.ok else None
    if as_json:
        print(json.dumps(metadata, indent=2, ensure_ascii=False))
    else:
        print(format_report(file, tensors, metadata, status.ok, status.notice, problems))
    if not status.ok:
        covered = "metadata or tensors" if status.covers_metadata else "tensors"
        raise CommandError(f"{file}: content hash MISMATCH: the {covered} were modified after the file was written")
    if problems:
        raise CommandError(f"{file}: {len(problems)} inconsistenc{'y' if len(problems) == 1 else 'ies'}: "
                           + "; ".join(problems))
    return 0


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    # dispatch on what the path is: a teacher-view cache folder, or an artifact file
    if path.is_dir():
        return inspect_cache(path, args.json)
    if path.suffix.lower() == ".onnx":
        return inspect_onnx(args.file, args.json)
    return inspect_artifact(args.file, args.json)


def inspect_onnx(file: str, as_json: bool) -> int:
    """Print an exported classifier's metadata, graph interface, digest status and validation (no
    onnxruntime needed); CommandError when it is not ours, does not verify or is inconsistent."""
    from caspl_plugin.export.integrity import digest_problem, foreign_problem, metadata_problems, read_onnx_file

    onnx_file = read_onnx_file(file)
    foreign = foreign_problem(onnx_file)  # not ours, another format version, duplicated keys: nothing to show
    if foreign is not None:
        raise CommandError(foreign)
    problem = digest_problem(onnx_file)
    meta, problems = metadata_problems(onnx_file.ours, onnx_file)
    if as_json:
        print(json.dumps({k: v for k, v in meta.items()}, indent=2, ensure_ascii=False))
    else:
        shown = {k: v for k, v in meta.items() if k != "content_sha256"}
        rows = list(_lines(shown))
        rows.append(("graph.input", ", ".join(f"{name} {shape}" for name, shape in onnx_file.inputs.items())))
        rows.append(("graph.output", ", ".join(f"{name} {shape}" for name, shape in onnx_file.outputs.items())))
        rows.append(("content_sha256", f"{meta.get('content_sha256')} ({'MISMATCH' if problem else 'ok'}, graph+metadata)"))
        if problem is None:
            rows.append(("validation", "ok" if not problems else f"{len(problems)} problem(s)"))
            rows.extend(("  problem", p) for p in problems)
        width = max(len(key) for key, _ in rows)
        print("\n".join([f"{file} (exported classifier, ONNX)"] + [f"  {key.ljust(width)} : {text}" for key, text in rows]))
    if problem is not None:
        raise CommandError(problem)
    if problems:
        raise CommandError(f"{file}: {len(problems)} inconsistenc{'y' if len(problems) == 1 else 'ies'}: " + "; ".join(problems))
    return 0


def inspect_cache(folder: Path, as_json: bool) -> int:
    """Describe and verify a teacher-view cache folder (``caspl teacher-cache``; one domain or several),
    or print its index as JSON; CommandError (exit 2) when it does not verify: the index's fields and
    content hash, every shard's place, size, sha256 and shapes (:mod:`caspl_plugin.cache.store`)."""
    from caspl_plugin.cache.store import DOMAINS_FILE, INDEX_FILE, inspect_cache_folder

    index = next((folder / name for name in (INDEX_FILE, DOMAINS_FILE) if (folder / name).is_file()), None)
    if index is None:
        raise CommandError(f"{folder} is a directory without a teacher-view cache index ({INDEX_FILE} or {DOMAINS_FILE}); "
                           "expected an artifact file (.safetensors), an exported classifier (.onnx) or a `caspl teacher-cache` folder")
    text, problems = inspect_cache_folder(folder)
    if as_json and not problems:
        print(index.read_text(encoding="utf-8"))
    else:
        print(text)
    if problems:
        raise CommandError(f"{folder}: the teacher-view cache does not verify ({len(problems)} problem(s)): "
                           + " | ".join(" ".join(p.split()) for p in problems[:3])
                           + (f" | ... ({len(problems) - 3} more)" if len(problems) > 3 else ""))
    return 0
