"""Token files for other trainers (`pretrain export-tokens --format llm.c|nanogpt`): a split's rows, in order.

llm.c: a 256 int32 header (magic, version, token count), then the tokens; uint16 vocabularies use magic
20240520 / version 1, uint32 ones llm.c's llama-3 header 20240801 / 7.
nanoGPT: the bare uint16 tokens, no header (its train.py reads `np.memmap(path, dtype=np.uint16, mode="r")`,
so an llm.c file read that way starts with 512 "tokens" of header); vocabularies above 65,536 do not fit.
"""

from __future__ import annotations

import os
from typing import Any, Literal, get_args

import numpy as np

from storage import paths
from storage.files import AtomicFile
from storage.manifest import Manifest
from storage.token_shards import TokenShards

LLMC_HEADERS: dict[np.dtype[Any], tuple[int, int]] = {
    np.dtype(np.uint16): (20240520, 1),
    np.dtype(np.uint32): (20240801, 7),
}


TokenFormat = Literal["llm.c", "nanogpt"]
TOKEN_FORMATS: tuple[TokenFormat, ...] = get_args(TokenFormat)


def _write_tokens(shards: TokenShards, out: str, header: bytes) -> int:
    """Write `header`, then every token of the shards in order, to `out` (whole or not at all)."""
    fs, p = paths.filesystem(out)
    with AtomicFile(fs, p) as f:
        f.file.write(header)
        for chunk in shards.iter_chunks():
            f.file.write(np.ascontiguousarray(chunk).tobytes())
    return shards.num_tokens


def write_llmc(directory: str, out: str) -> int:
    """Write the rows of a split directory, in order, as an llm.c `.bin` file; returns the token count."""
    shards = TokenShards(directory)
    n = shards.num_tokens
    if n >= 2**31:
        raise ValueError(f"{directory}: {n:,} tokens do not fit the llm.c header (int32 count); export fewer shards")
    magic, version = LLMC_HEADERS[shards.dtype]
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (magic, version, n)
    return _write_tokens(shards, out, header.tobytes())


def write_nanogpt(directory: str, out: str) -> int:
    """Write the rows of a split directory, in order, as a headerless uint16 nanoGPT `.bin`; the token count."""
    shards = TokenShards(directory)
    if shards.dtype != np.dtype(np.uint16):
        raise ValueError(
            f"{directory}: {shards.dtype} tokens (vocabulary over 65,536) do not fit nanoGPT's uint16 .bin; "
            f"use --format llm.c"
        )
    return _write_tokens(shards, out, b"")


def read_llmc(path: str) -> np.ndarray:
    """Tokens of an llm.c `.bin` file (memory-mapped), checking magic, version and length."""
    header = np.fromfile(path, dtype=np.int32, count=256)
    dtypes = {mv: dt_ for dt_, mv in LLMC_HEADERS.items()}
    key = (int(header[0]), int(header[1]))
    if len(header) < 256 or key not in dtypes:
        raise ValueError(f"{path}: not an llm.c token file (magic/version {key})")
    n, dtype = int(header[2]), dtypes[key]
    if os.path.getsize(path) != 1024 + n * dtype.itemsize:
        raise ValueError(f"{path}: size {os.path.getsize(path)} does not match {n} tokens in the header")
    tokens: np.ndarray = np.memmap(path, dtype=dtype, mode="r", offset=1024, shape=(n,))
    return tokens


def export_tokens(manifest: Manifest, root: str, split: str, out: str, fmt: TokenFormat = "llm.c") -> int:
    """Write split `split` of a tokenize version to `out` in format `fmt`; returns the token count."""
    if split not in manifest.extras.get("sequences", {}):
        raise ValueError(
            f"tokenize@{manifest.version} has no split {split!r}; it has {sorted(manifest.extras.get('sequences', {}))}"
        )
    write = {"llm.c": write_llmc, "nanogpt": write_nanogpt}[fmt]
    return write(paths.version_dir(root, manifest.stage, manifest.version) + f"/{split}", out)
