"""Several domains as one phase-1 data source: universal boosting prompts.

A *domain* is unlabeled images + its own class names + its own teacher template + a name. The
distiller keeps one class set per domain (teacher and student class features per domain); this
module makes sure that **every batch comes from one domain**: :class:`MultiDomainImages` returns
the epoch's global batches from :meth:`~MultiDomainImages.batches` (the training loop's batch-plan
hook) and tags every item with ``{"domain": LongTensor[]}`` (per-sample extras the loop passes to
``BoostingDistiller.loss(..., domain=...)``).

Sampling (``--domain-sampling``):

- ``size`` — each domain's images are shuffled and cut into batches, then all batches of all domains
  are shuffled together: every image once per epoch, domains appear in proportion to their image
  counts.
- ``even`` — every domain gives the same number of full batches per epoch, that of the largest
  domain: a smaller domain is resampled (fresh permutations of it, concatenated, until it fills its
  batches), so every image of every domain is seen at least once per epoch and the largest domain's
  once (plus the fill of its last batch when ``drop_last`` is off).

With ``size``, a domain with fewer images than the batch size gives one partial batch (it is never
dropped); ``drop_last`` drops only the partial last batch of a domain that has full ones. Everything is drawn
from the generator the loop seeds per epoch, so a resumed run replays the same batches.

Domains are described on the command line (``--domain IMAGES CLASSNAMES TEMPLATE [NAME]``,
repeatable) or in a manifest (JSON or YAML)::

    {"domains": [
      {"name": "pets", "images": "pets/images", "class_names": "pets/classnames.txt",
       "template": "a photo of a {}, a type of pet."},
      {"name": "dtd", "images": "dtd/images", "class_names": "dtd/classnames.txt", "template": "DescribableTextures"}
    ]}

Relative paths in a manifest are relative to the manifest's folder; a template without ``{}`` is a
dataset name whose CoOp template is used. Every entry is checked field by field before anything is
read (:func:`read_manifest`): ``images``, ``class_names`` and ``template`` non-empty strings, ``name``
(optional, default: the image folder's name) a string; errors name the manifest, the entry and the field.

Every command applies the same rules to every domain, from a manifest or the command line:

- a **name** names the domain's teacher-view cache folder, so it is a plain folder name on every file
  system (:data:`DOMAIN_NAME`: letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit),
  unique ignoring case;
- a **template** holds exactly one ``{}`` (where the class name goes) and no other brace, or is a
  dataset name (:func:`resolve_template`).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from ..files import NotUTF8Error, read_utf8
from ..names import did_you_mean
from .unlabeled import UnlabeledImages, list_images, read_class_names

logger = logging.getLogger(__name__)

SAMPLING = ("size", "even")
#: a domain name: a folder name on every file system (it names the domain's teacher-view cache folder)
DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"
_MANIFEST_FIELDS = ("name", "images", "class_names", "template")


class DomainError(ValueError):
    """A domain (manifest entry or command-line value) that cannot be used; the message says where."""


def check_domain_name(name, where: str = "domain") -> str:
    """``name`` if it is a valid domain name (:data:`DOMAIN_NAME`), else :class:`DomainError` naming ``where``."""
    if not isinstance(name, str):
        raise DomainError(f"{where}: the name must be a string of {_NAME_RULE}, got {type(name).__name__} {name!r}")
    if not DOMAIN_NAME.fullmatch(name):
        raise DomainError(f"{where}: the name {name!r} cannot name a cache folder; use {_NAME_RULE}")
    return name


@dataclass(frozen=True)
class DomainClassSet:
    """What the distiller needs of a domain: its name, class names and teacher template."""

    name: str
    class_names: tuple[str, ...]
    template: str


@dataclass(frozen=True)
class DomainSource:
    """A validated domain: its class set and its image files."""

    classes: DomainClassSet
    files: tuple[Path, ...]
    #: the image folder (what a teacher-view cache's file keys are relative to)
    root: Optional[Path] = None

    @property
    def name(self) -> str:
        return self.classes.name

    def metadata(self) -> dict:
        """The artifact's record of this domain (JSON values)."""
        from ..artifacts.boosting import class_names_sha256

        names = list(self.classes.class_names)
        return {"name": self.name, "num_classes": len(names), "class_names_sha256": class_names_sha256(names),
                "class_names": names, "template": self.classes.template, "num_images": len(self.files)}


def check_template(value) -> str:
    """``value`` if it is a text template: a string with exactly one ``{}`` and no other brace (so
    ``value.format(name)`` puts the class name there and nowhere else); :class:`DomainError` otherwise."""
    if not isinstance(value, str):
        raise DomainError(f"template must be a string with one '{{}}', got {type(value).__name__} {value!r}")
    if value.count("{}") != 1 or "{" in value.replace("{}", "", 1) or "}" in value.replace("{}", "", 1):
        raise DomainError(f"template {value!r} must contain exactly one '{{}}' (where the class name goes) and no other "
                          "'{' or '}'")
    return value


def resolve_template(value) -> str:
    """A template with exactly one ``{}`` (:func:`check_template`), or a dataset name whose CoOp
    zero-shot template is used."""
    if isinstance(value, str) and ("{" in value or "}" in value):
        return check_template(value)
    from .catalog import TEMPLATES

    if isinstance(value, str) and value in TEMPLATES:
        return TEMPLATES[value]
    if not isinstance(value, str):
        check_template(value)
    raise DomainError(f"template {value!r} has no '{{}}' and is not a dataset name; known datasets: "
                      f"{', '.join(sorted(TEMPLATES))}." + did_you_mean(value, TEMPLATES))


def load_domain(images, class_names, template: str, name: Optional[str] = None) -> DomainSource:
    """One domain from an image folder, a class-names file and a template; clear errors otherwise."""
    images = Path(images)
    name = images.name if name is None else name
    check_domain_name(name, f"domain of {images}")
    try:
        files = list_images(images)
        names = read_class_names(class_names)
        template = resolve_template(template)
    except (OSError, ValueError) as error:
        raise DomainError(f"domain {name!r}: {error}") from error
    if len(names) < 2:
        raise DomainError(f"domain {name!r}: {class_names} has {len(names)} class name; a domain needs at least 2 classes")
    return DomainSource(DomainClassSet(name, tuple(names), template), tuple(files), images)


def check_domain_names(names: Sequence[str]) -> list[str]:
    """At least one name, each a valid domain name (:data:`DOMAIN_NAME`), unique even ignoring case
    (cache folders of names differing only in case collide on case-insensitive file systems)."""
    names = list(names)
    if not names:
        raise DomainError("no domain given")
    for name in names:
        check_domain_name(name)
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    dupes = sorted(name for name, count in seen.items() if count > 1)
    if dupes:
        raise DomainError(f"duplicate domain name(s) {dupes}: every domain needs its own name "
                          "(4th value of --domain, or 'name' in the manifest)")
    folded: dict[str, str] = {}
    for name in names:
        other = folded.setdefault(name.lower(), name)
        if other != name:
            raise DomainError(f"domain names {other!r} and {name!r} differ only in case: their cache folders would "
                              "collide on a case-insensitive file system")
    return names


def check_domains(domains: Sequence[DomainSource]) -> list[DomainSource]:
    """At least one domain; names valid and unique (:func:`check_domain_names`)."""
    domains = list(domains)
    check_domain_names([d.name for d in domains])
    return domains


def domains_from_args(values: Sequence[Sequence[str]]) -> list[DomainSource]:
    """``--domain IMAGES CLASSNAMES TEMPLATE [NAME]`` values (name defaults to the image folder's name)."""
    domains = []
    for value in values:
        if len(value) not in (3, 4):
            raise DomainError(f"--domain takes IMAGES CLASSNAMES TEMPLATE [NAME], got {len(value)} value(s): {list(value)}")
        domains.append(load_domain(*value))
    return check_domains(domains)


def read_domains(domain: Optional[Sequence[Sequence[str]]] = None, manifest=None) -> Optional[list[DomainSource]]:
    """The domains of ``--domain`` values or of a ``--domains`` manifest (None when neither is given)."""
    if domain and manifest:
        raise DomainError("use either --domain (repeated) or --domains MANIFEST, not both")
    if manifest:
        return read_manifest(manifest)
    return domains_from_args(domain) if domain else None


def benchmark_domain(name: str, root, *, subsample: str = "all") -> DomainSource:
    """A CoOp benchmark dataset under ``root`` (Dassl's ``DATASET.ROOT``) as a domain: the images of
    its train split, its class names (``subsample`` classes, as ``DATASET.SUBSAMPLE_CLASSES``) and its
    CoOp template; the domain's root is ``root`` (what ``caspl teacher-cache --dataset`` keys by)."""
    from .catalog import dataset_spec
    from .labeled import class_names_of
    from .layouts import load_benchmark

    try:
        spec = dataset_spec(name)
        splits = load_benchmark(name, str(root), subsample=subsample)
    except (KeyError, OSError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise DomainError(f"domain {name!r}: {message}") from None
    files = tuple(sorted({Path(record.impath) for record in splits.train}))
    if not files:
        raise DomainError(f"domain {name!r}: the train split under {root} has no images")
    return DomainSource(DomainClassSet(name, tuple(class_names_of(splits.train)), spec.template), files, Path(root))


def dassl_domains(entries: Sequence[str], root, *, subsample: str = "all") -> list[DomainSource]:
    """The domains of ``TRAINER.BOOSTDISTILL.DOMAINS``: each entry a CoOp dataset name (read under
    ``root``) or a manifest file (``.json``/``.yaml``/``.yml``, see the module docstring)."""
    domains: list[DomainSource] = []
    for entry in entries:
        entry = str(entry)
        if Path(entry).suffix.lower() in (".json", ".yaml", ".yml"):
            domains += read_manifest(entry)
        else:
            domains.append(benchmark_domain(entry, root, subsample=subsample))
    return check_domains(domains)


def _shown(value) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def read_manifest(path) -> list[DomainSource]:
    """Domains from a JSON or YAML manifest (see the module docstring); paths relative to its folder.

    Every entry is checked field by field before any folder or file it names is read; a problem is a
    :class:`DomainError` naming the manifest, the entry (its index, and its name when that is valid)
    and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"domain manifest not found: {path}")
    try:
        text = read_utf8(path)
    except NotUTF8Error as error:
        raise DomainError(f"domain manifest {error}; save it as UTF-8") from None
    kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
    try:
        if kind == "YAML":
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # a parse error of either format: name the file, on one line
        reason = " ".join(str(error).split())
        raise DomainError(f"domain manifest {path} is not valid {kind}: {reason}") from None
    if isinstance(data, dict):
        unknown = sorted(map(str, set(data) - {"domains"}))
        if unknown or "domains" not in data:
            raise DomainError(f"domain manifest {path}: expected {{\"domains\": [...]}} or a list of domains, got the "
                              f"key(s) {sorted(map(str, data))}")
        entries = data["domains"]
    else:
        entries = data
    if not isinstance(entries, list):
        raise DomainError(f"domain manifest {path}: expected {{\"domains\": [...]}} or a list of domains, got "
                          f"{_shown(entries)}")
    if not entries:
        raise DomainError(f"domain manifest {path} lists no domain")
    checked = [_manifest_entry(path, i, entry) for i, entry in enumerate(entries)]
    try:
        check_domain_names([entry.get("name", Path(entry["images"]).name) for entry in checked])
    except DomainError as error:
        raise DomainError(f"domain manifest {path}: {error}") from None
    domains = []
    for i, entry in enumerate(checked):
        where = f"domain manifest {path}, entry {i}"
        try:
            domains.append(load_domain(path.parent / entry["images"], path.parent / entry["class_names"],
                                       entry["template"], entry.get("name")))
        except (OSError, ValueError) as error:
            raise DomainError(f"{where}: {error}") from None
    return check_domains(domains)


def _manifest_entry(path: Path, i: int, entry) -> dict:
    """Entry ``i`` of a manifest, every field's type and form checked (nothing is read yet)."""
    where = f"domain manifest {path}, entry {i}"
    if not isinstance(entry, dict):
        raise DomainError(f"{where}: expected an object with {', '.join(_MANIFEST_FIELDS)}, got {_shown(entry)}")
    if "name" in entry:
        check_domain_name(entry["name"], f"{where}, field 'name'")
        where += f" ({entry['name']})"
    unknown = sorted(map(str, set(entry) - set(_MANIFEST_FIELDS)))
    if unknown:
        raise DomainError(f"{where}: unknown field(s) {unknown}; the fields are {', '.join(_MANIFEST_FIELDS)}")
    for field in ("images", "class_names", "template"):
        value = entry.get(field)
        if field not in entry:
            raise DomainError(f"{where}: field {field!r} is missing")
        if not isinstance(value, str) or not value.strip():
            expected = "a folder path" if field == "images" else "a file path" if field == "class_names" else \
                "a template with one '{}' or a dataset name"
            raise DomainError(f"{where}, field {field!r}: expected {expected} (a non-empty string), got {_shown(value)}")
    try:
        resolve_template(entry["template"])
    except DomainError as error:
        raise DomainError(f"{where}, field 'template': {error}") from None
    if "name" not in entry and not DOMAIN_NAME.fullmatch(Path(entry["images"]).name):
        raise DomainError(f"{where}: no 'name' field, and the image folder's name {Path(entry['images']).name!r} cannot "
                          f"name a cache folder; add a 'name' of {_NAME_RULE}")
    return entry


# ---- the batch plan ------------------------------------------------------------------------------

def plan_batches(sizes: Sequence[int], batch_size: int, generator: torch.Generator, *,
                 drop_last: bool = True, sampling: str = "size") -> list[tuple[int, list[int]]]:
    """One epoch of ``(domain, local indices)`` batches, each from one domain (see the module docstring)."""
    if sampling not in SAMPLING:
        raise ValueError(f"domain sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
    if batch_size < 1 or not sizes or min(sizes) < 1:
        raise ValueError(f"need batch_size >= 1 and non-empty domains, got {batch_size} and sizes {list(sizes)}")

    def batch_count(size: int) -> int:
        return max(1, size // batch_size if drop_last else -(-size // batch_size))

    target = max(batch_count(size) for size in sizes)
    plan: list[tuple[int, list[int]]] = []
    for d, size in enumerate(sizes):
        order = torch.randperm(size, generator=generator)
        if sampling == "even":
            while len(order) < target * batch_size:
                order = torch.cat([order, torch.randperm(size, generator=generator)])
            count = target
        else:
            count = batch_count(size)
        order = order.tolist()
        plan += [(d, order[i * batch_size:(i + 1) * batch_size]) for i in range(count)]
    shuffle = torch.randperm(len(plan), generator=generator).tolist()
    return [plan[i] for i in shuffle]


class MultiDomainImages(Dataset):
    """The images of several domains, one index space; items carry ``{"domain": LongTensor[]}``.

    By default each domain's files are read with ``transform``; ``datasets`` (one per domain, in
    order, each of ``len(domain.files)`` items of the loop's data protocol, e.g. the
    :class:`~caspl_plugin.cache.dataset.TeacherViewDataset` of a domain's teacher-view cache)
    replace them, their extras kept and their ``set_epoch`` called.
    """

    def __init__(self, domains: Sequence[DomainSource], transform: Optional[Callable] = None, sampling: str = "size",
                 *, datasets: Optional[Sequence[Dataset]] = None):
        if sampling not in SAMPLING:
            raise ValueError(f"domain sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
        self.domains, self.sampling = check_domains(domains), sampling
        if (transform is None) == (datasets is None):
            raise ValueError("give exactly one of transform (read the domains' files) or datasets (one per domain)")
        if datasets is None:
            datasets = [UnlabeledImages(list(d.files), transform) for d in self.domains]
        datasets = list(datasets)
        if len(datasets) != len(self.domains):
            raise ValueError(f"{len(datasets)} dataset(s) for {len(self.domains)} domain(s)")
        for d, dataset in zip(self.domains, datasets):
            if len(dataset) != len(d.files):
                raise ValueError(f"domain {d.name!r}: its dataset has {len(dataset)} items for {len(d.files)} files")
        self.datasets = datasets
        self.offsets = [0]
        for d in self.domains:
            self.offsets.append(self.offsets[-1] + len(d.files))

    def __len__(self) -> int:
        return self.offsets[-1]

    def domain_of(self, index: int) -> int:
        for d in range(len(self.domains)):
            if index < self.offsets[d + 1]:
                return d
        raise IndexError(index)

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def __getitem__(self, index: int):
        d = self.domain_of(index)
        image, path, *extras = self.datasets[d][index - self.offsets[d]]
        return image, path, {**(extras[0] if extras else {}), "domain": torch.tensor(d, dtype=torch.long)}

    def batches(self, epoch: int, global_batch_size: int, generator: torch.Generator, drop_last: bool) -> list[list[int]]:
        """The epoch's global batches as index lists; every batch from one domain."""
        del epoch  # the loop seeds ``generator`` per epoch
        sizes = [len(d.files) for d in self.domains]
        plan = plan_batches(sizes, global_batch_size, generator, drop_last=drop_last, sampling=self.sampling)
        return [[self.offsets[d] + i for i in local] for d, local in plan]
