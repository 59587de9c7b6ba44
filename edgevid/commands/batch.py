"""``edgevid batch``: the same questions about every video of an archive, locally or on a Ray cluster.

    edgevid batch clips/ night/*.mp4 @more.txt --demo -i "What happens?" -i "Is anyone there?" -o results.jsonl
    edgevid batch clips/ -m models/gemma-4-e2b -i "..." -o results.jsonl --workers 4
    edgevid batch clips/ -m /shared/models/gemma-4-e2b -i "..." -o results.jsonl --ray HEAD:6379

One JSON line per (source, question) goes to -o as it is answered; the same command again resumes.
Progress on stderr, then a summary line. Exit 0 when every answer has a record (failed ones included),
1 when the run cannot go on, 130 after Ctrl-C.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys

import click

from edgevid.commands.options import device_options, generation_options, model_options
from edgevid.errors import InvalidRequestError

LOCAL_RAY = "<local>"
_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[A-Za-z0-9.\-\[\]:]+:\d{2,5})$")


@click.command("batch")
@click.argument("sources", nargs=-1)
@model_options
@click.option("-i", "--question", "questions", multiple=True, required=True,
              help="A question asked about every source (repeatable).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Results file (JSON Lines); an existing one is resumed, never overwritten.")
@click.option("--workers", type=click.IntRange(1, 1024),
              help="Worker processes (or Ray actors). Default: cores // threads, as many as memory holds.")
@click.option("--threads", type=click.IntRange(1, 256), help="onnxruntime threads per worker. [default: 2]")
@click.option("--ray", "ray_address", is_flag=False, flag_value=LOCAL_RAY, default=None, metavar="[ADDRESS]",
              help="Run on Ray: a cluster's ADDRESS (HOST:6379, ray://HOST:10001, auto), or alone for a local "
                   "Ray instance. Needs `pip install \"edgevid[ray]\"`.")
@click.option("--ship-model", is_flag=True,
              help="With --ray: send the model folder through Ray's object store instead of reading -m's path "
                   "on every node.")
@click.option("--num-frames", type=click.IntRange(1, 1024), help="Frames sampled per video (default: the model's).")
@generation_options
@device_options
@click.option("--allowed-media-domains", "domains", multiple=True,
              help="URL sources only from these hosts (repeatable, or comma-separated). Default: any host.")
@click.option("--allow-private-urls", is_flag=True,
              help="Allow URL sources on loopback, private and link-local addresses (refused by default).")
@click.option("--max-media-bytes", default=2**30, show_default=True, type=click.IntRange(min=1),
              help="Cap on each downloaded URL source.")
@click.option("--answer-timeout", type=click.FloatRange(min=0), default=900, show_default=True,
              help="Seconds one answer may take; a worker stuck longer is replaced and the source recorded as "
                   "failed (0 = no limit).")
@click.option("--no-progress", is_flag=True, help="No progress line on stderr (the summary is still printed).")
def batch(sources, model_dir, demo, questions, output, workers, threads, ray_address, ship_model, num_frames,
          generation, device, precision, domains, allow_private_urls, max_media_bytes, answer_timeout, no_progress):
    """Ask the same questions about every video of an archive (local workers or a Ray cluster)."""
    from edgevid.batch import batch_url_policy, run_batch

    sources = list(sources)
    if ray_address not in (None, LOCAL_RAY) and (not _ADDRESS.match(ray_address) or os.path.exists(ray_address)):
        sources.append(ray_address)        # `--ray clips/`: the next word was a source, not an address
        ray_address = LOCAL_RAY
    if not sources:
        raise InvalidRequestError("name at least one SOURCE (file, folder, glob, @list.txt or URL)", param="source")
    if ship_model and ray_address is None:
        raise InvalidRequestError("--ship-model goes with --ray", param="ship_model")
    options = dataclasses.replace(generation, num_frames=num_frames)
    domains = tuple(d.strip() for item in domains for d in item.split(",") if d.strip())
    policy = batch_url_policy(domains=domains or None, allow_private_urls=allow_private_urls,
                              max_bytes=max_media_bytes)
    ray = None if ray_address is None else True if ray_address in (LOCAL_RAY, "local") else ray_address
    summary = run_batch(sources, questions, output, model=None if demo else model_dir, demo=demo, options=options,
                        precision=precision, device=device, workers=workers, threads=threads, ray=ray,
                        ship_model=ship_model, url_policy=policy, progress=not no_progress,
                        answer_timeout=answer_timeout or None)
    click.echo(summary.line(), err=True)
    if summary.interrupted:
        sys.exit(130)
