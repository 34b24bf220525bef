"""Student weights recorded in an artifact: the digest written at save time, and the check at load time
that the weights found are the ones recorded (a path in a file is never trusted as is)."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from ..artifacts.store import ArtifactError
from .weights import (
    RANDOM, WeightsNotFoundError, WeightsSource, file_sha256, hub_weights_file, package_weights_file, resolve_weights,
    weights_digest,
)


def recorded_digest(backbone: str, recorded: Optional[str]) -> Optional[str]:
    """The digest an artifact records (:func:`caspl_plugin.inference.save_classifier`) for the weights source string ``recorded``."""
    source = parse_recorded_source(backbone, recorded)
    return None if source is None else weights_digest(source)


def parse_recorded_source(backbone: str, recorded: Optional[str]):
    """The :class:`WeightsSource` a recorded ``kind:location`` string names (None: random/unknown)."""
    if not recorded or recorded == RANDOM:
        return None
    kind, _, location = recorded.partition(":")
    if kind == "package":
        return WeightsSource("package", location)
    if kind == "file":
        return WeightsSource("file", location, path=location)
    if kind == "tag":
        return resolve_weights(backbone, location)
    if kind == "hub":
        return WeightsSource("hub", location, path=hub_weights_file(location))
    return WeightsSource("file", recorded, path=recorded)  # an explicit path given at save time


def verified_recorded_weights(path, student: Mapping[str, Any]) -> Optional[str]:
    """The ``create_clip`` weights argument for a classifier's recorded weights, after checking the
    recorded digest; raises :class:`ArtifactError` (saying what to pass instead) when it cannot."""
    recorded, digest = student.get("weights"), student.get("weights_sha256")
    if not recorded or recorded == RANDOM:
        return RANDOM if recorded == RANDOM else None
    hint = "pass the student weights explicitly (weights=... / caspl classify --weights FILE) to use them anyway"
    try:
        source = parse_recorded_source(student["backbone"], recorded)
    except (WeightsNotFoundError, ValueError) as error:
        raise ArtifactError(f"{path}: the recorded student weights {recorded} are not available ({error}); {hint}") from None
    if source.kind == "hub":  # the hub model's own weights, read from its cache file
        if digest is not None and source.path is not None and file_sha256(source.path) != digest:
            raise ArtifactError(f"{path}: the cached weights of {source.location} ({source.path}) differ from the ones it "
                                f"was saved with (recorded sha256 {digest}); {hint}")
        return None
    if source.kind == "package":
        file = package_weights_file(source.location)
        if file is None or (digest is not None and file_sha256(file) == digest):
            return None  # the package's own default weights for this model
        found = file_sha256(file) if file.is_file() else "no file"
        what = "records no digest for them" if digest is None else f"recorded sha256 {digest}, found {found}"
        raise ArtifactError(
            f"{path}: the package weights of {source.location} cannot be verified against the ones it was saved "
            f"with ({what}); {hint}"
        )
    file = source.path
    if digest is None:
        raise ArtifactError(
            f"{path} names its student weights {file} but records no digest for them (written by an older "
            f"version), so the file cannot be verified; {hint}"
        )
    try:
        found = file_sha256(file)
    except OSError as error:
        raise ArtifactError(f"{path}: the recorded student weights {file} cannot be read ({error}); {hint}") from None
    if found != digest:
        raise ArtifactError(
            f"{path}: the recorded student weights {file} do not match the digest recorded in the artifact "
            f"(recorded sha256 {digest}, file {found}): the file was changed or replaced; {hint}"
        )
    return file
