"""Parameters of the text stages (ingest, tokenize, count), validated when pipeline.yaml loads.

Only pydantic and the source spec here: checking a config must not import pandas, pyarrow
or a segmenter.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kexue.text.sources import SourceSpec


class IngestParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[SourceSpec] = Field(default_factory=lambda: [SourceSpec(source="builtin:peoples-daily-1998")], min_length=1)
    partition_bytes: int = Field(16_000_000, ge=1_000)  # target UTF-8 bytes of text per partition
    max_partition_factor: float = Field(4.0, ge=1.0)  # hard cut at factor × target
    deduplicate: bool = True  # drop exact duplicate texts (counted in the report)

    def check_paths(self, base_dir: Path) -> None:
        """Every configured source path exists (checked before a run starts any work)."""
        for i, src in enumerate(self.sources):
            path = src.resolve(base_dir)
            if not src.is_builtin and not (path.exists() or path.is_symlink()):
                raise ValueError(f"sources.{i}.source: {src.source!r} does not exist (resolved to {path})")



class TokenizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["rjieba", "jieba"] = "rjieba"
    hmm: bool = True  # jieba's HMM for unknown words
    user_dict: str | None = None  # jieba user-dictionary file (forces the jieba backend)
    drop_whitespace: bool = True  # jieba emits spaces/newlines as tokens; they carry no meaning



class CountParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_docs: int = Field(2000, ge=1)  # documents counted together before merging
    merge_fanin: int = Field(8, ge=2)  # partials merged per tree node
