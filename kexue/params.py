"""Which parameter model validates which task's ``params`` in ``pipeline.yaml``.

Kept in ``kexue`` (no orchestrator) so that a config can be checked — whole graph, every
parameter — before anything starts, by the CLI, the flow and the tests alike.
"""
from __future__ import annotations

from kexue.config import ParamValidator, validator_for
from kexue.count import CountParams
from kexue.ingest import IngestParams
from kexue.tokenize import TokenizeParams

VALIDATORS: dict[str, ParamValidator] = {
    "ingest": validator_for(IngestParams),
    "tokenize": validator_for(TokenizeParams),
    "count": validator_for(CountParams),
}
