"""Staging: fetch a MOUS's archive files into its member folder, verified, resumable and safe.

    member_path(workdir, mous)          -> <workdir>/member.<MOUSfile>/
    stage_mous(mous, source, workdir)   README + auxiliary + products + every EB (the CLI)
    stage_auxiliary / stage_eb          the two Airflow tasks (one mapped per EB)
    open_source(url)                    http(s)://request-handler or s3://bucket/prefix

Module map: sources (HTTP/S3 + error mapping), datalink (VOTable), tarstream
(streaming untar, safety, resume checkpoints), layout (prefix stripping),
stage (orchestration, stamps, swap-in), lock, progress, run_listing (a DAG run's listing,
asked once by its first step that needs it and read by the later ones).
"""
from .layout import member_path
from .sources import HttpSource, S3Source, open_source
from .stage import StageOptions, list_mous, stage_auxiliary, stage_eb, stage_mous

__all__ = ["member_path", "open_source", "HttpSource", "S3Source", "StageOptions", "list_mous",
           "stage_auxiliary", "stage_eb", "stage_mous"]
