"""The pinned catalogue of FastVLM checkpoints Glimpse knows how to download.

Each entry names the Hugging Face repository and the files a conversion needs. What could be confirmed from the
public repositories is recorded; what could not (full commit hashes, exact byte counts, sha256 of each file) is
``None`` and is never guessed. The downloader fills the gap at run time:

* revision ``None``: the first request resolves ``main`` to a commit (``X-Repo-Commit``) and every later file and
  every resumed download of that model uses that same commit, so one download never mixes two revisions;
* sha256 ``None``: the Hub's ETag is checked instead. For LFS files (the weights) it is the file's sha256; for small
  git files it is the git blob sha1, which is checked too. A pinned value always wins over what the server says.

Sizes marked approximate come from the Hub's file listing (rounded by the website) and are only used for the
disk-space estimate before the server has been asked; the real check uses the sizes the server reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from glimpse.engine.errors import ModelNotFoundError

LICENSE_ID = "apple-amlr"
LICENSE_NAME = "Apple Machine Learning Research Model License"
LICENSE_URL = "https://github.com/apple/ml-fastvlm/blob/main/LICENSE_MODEL"
LICENSE_FILE = "LICENSE"  # name of the licence file in each Hugging Face repository
INDEX_FILE = "model.safetensors.index.json"
SINGLE_WEIGHTS = "model.safetensors"

_GB = 1_000_000_000


@dataclass(frozen=True)
class CatalogFile:
    """One file of a repository. ``optional`` files may be absent from the repository (a 404 is not an error)."""

    name: str
    size: int | None = None
    sha256: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class CatalogEntry:
    """One downloadable model: where it lives, what to fetch, how big it is, and under which licence."""

    name: str
    display_name: str
    repo: str
    revision: str | None
    files: tuple[CatalogFile, ...]
    approx_download_bytes: int
    llm: str
    llm_params: str
    license_id: str = LICENSE_ID
    apple_zip: str = ""
    aliases: tuple[str, ...] = ()

    def file(self, name: str) -> CatalogFile | None:
        return next((f for f in self.files if f.name == name), None)


def _tokenizer_and_config() -> tuple[CatalogFile, ...]:
    # Present in every FastVLM repository's listing. tokenizer.json is not in the listings we could see, but Qwen2
    # repositories sometimes carry it; the converter does not need it, so it is fetched only if it is there.
    return (
        CatalogFile(LICENSE_FILE),
        CatalogFile("config.json"),
        CatalogFile("generation_config.json"),
        CatalogFile("added_tokens.json"),
        CatalogFile("special_tokens_map.json"),
        CatalogFile("tokenizer_config.json"),
        CatalogFile("vocab.json"),
        CatalogFile("merges.txt"),
        CatalogFile("tokenizer.json", optional=True),
    )


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="fastvlm-0.5b",
        display_name="FastVLM 0.5B",
        repo="apple/FastVLM-0.5B",
        revision=None,  # the Hub shows commit 1637572 (short form only); the full hash could not be confirmed
        files=(*_tokenizer_and_config(), CatalogFile(SINGLE_WEIGHTS)),  # about 1.52 GB
        approx_download_bytes=int(1.53 * _GB),
        llm="Qwen2-0.5B",
        llm_params="0.5B",
        apple_zip="llava-fastvithd_0.5b_stage3",
        aliases=("0.5b", "fastvlm-0.5b", "fastvlm0.5b"),
    ),
    CatalogEntry(
        name="fastvlm-1.5b",
        display_name="FastVLM 1.5B",
        repo="apple/FastVLM-1.5B",
        revision=None,
        # The file listing of this repository could not be confirmed: accept either one model.safetensors or an
        # index with shards (the downloader adds the shards the index names). Size estimated from ~1.9 B bf16
        # parameters, not read from the Hub.
        files=(*_tokenizer_and_config(), CatalogFile(INDEX_FILE, optional=True),
               CatalogFile(SINGLE_WEIGHTS, optional=True)),
        approx_download_bytes=int(3.8 * _GB),
        llm="Qwen2-1.5B",
        llm_params="1.5B",
        apple_zip="llava-fastvithd_1.5b_stage3",
        aliases=("1.5b", "fastvlm-1.5b", "fastvlm1.5b"),
    ),
    CatalogEntry(
        name="fastvlm-7b",
        display_name="FastVLM 7B",
        repo="apple/FastVLM-7B",
        revision=None,  # the Hub shows commit e6b907d (short form only)
        files=(*_tokenizer_and_config(), CatalogFile(INDEX_FILE),
               # four shards; the Hub lists the first two as 4.88 and 4.93 GB, 15.5 GB for the whole repository
               *(CatalogFile(f"model-{i:05d}-of-00004.safetensors") for i in range(1, 5))),
        approx_download_bytes=int(15.5 * _GB),
        llm="Qwen2-7B",
        llm_params="7B",
        apple_zip="llava-fastvithd_7b_stage3",
        aliases=("7b", "fastvlm-7b", "fastvlm7b"),
    ),
)


def _key(text: str) -> str:
    return re.sub(r"[\s_]+", "-", text.strip().lower())


def names() -> list[str]:
    return [e.name for e in CATALOG]


def find(name: str) -> CatalogEntry | None:
    """The entry called ``name`` (case-insensitive; "0.5b", "FastVLM-0.5B" and "apple/FastVLM-0.5B" work), or None."""
    key = _key(name)
    for entry in CATALOG:
        if key in {entry.name, _key(entry.repo), _key(entry.repo.split("/")[-1]), *entry.aliases}:
            return entry
    return None


def lookup(name: str) -> CatalogEntry:
    """Like :func:`find`, but raise ModelNotFoundError listing the catalogue when nothing matches."""
    entry = find(name)
    if entry is None:
        raise ModelNotFoundError(f"There is no model called '{name}' in the catalogue.",
                                 f"Choose one of: {', '.join(names())}.")
    return entry


def guess_from_folder_name(folder_name: str) -> CatalogEntry | None:
    """Map a checkpoint folder name ("llava-fastvithd_0.5b_stage3", "FastVLM-1.5B", a snapshot) to its entry."""
    match = re.search(r"(?<![\d.])(0\.5|1\.5|7)b(?![a-z0-9])", folder_name.lower())
    return find(f"{match.group(1)}b") if match else None
