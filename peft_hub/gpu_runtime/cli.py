"""``peft-hub materialize | validate | demo``.

Each command checks its flags, calls one library function and prints. torch
and transformers are imported inside the commands, so the client CLI starts
without them. ``ctx.obj`` is the ``HubClient`` the root group built (None
when a command is invoked on its own).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from peft_hub.compose.spec import METHODS as COMPOSE_METHODS
from peft_hub.units import human_size

if TYPE_CHECKING:  # quantize imports torch, which these commands load only when they run
    from peft_hub.gpu_runtime.quantize import Quantization

DTYPE = click.Choice(["bf16", "fp16", "fp32"])
QUANT = click.Choice(["none", "int8", "nf4"])
DEVICE = click.Choice(["auto", "cpu", "cuda"])
METHODS = click.Choice(COMPOSE_METHODS)


@click.command("materialize")
@click.argument("base")
@click.argument("adapters", metavar="ADAPTER[+ADAPTER...]")
@click.option("--weights", default=None, help="Comma-separated weights, one per adapter.")
@click.option("--method", type=METHODS, default=None, help="How to compose several adapters (default: compose's).")
@click.option("--rank", type=click.IntRange(min=1), default=None, help="Composed rank, for the truncating methods.")
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Fraction kept, for ties/dare/magnitude_prune.")
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False), default=None,
              help="Output model directory (default: ./<base>-merged[-<quant>]).")
@click.option("--dtype", type=DTYPE, default=None, help="Output dtype (default: the base's).")
@click.option("--quantize", type=QUANT, default="none", show_default=True, help="bitsandbytes quantization.")
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Where merges run.")
@click.option("--force", is_flag=True, help="Write into a non-empty output directory that holds something else "
              "(same-named files are replaced, nothing else is deleted).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def materialize(hub: Any, base: str, adapters: str, weights: str | None, method: str | None, rank: int | None,
                density: float | None, output_dir: str | None, dtype: str | None, quantize: Quantization, device: str,
                force: bool, as_json: bool) -> None:
    """Merge ADAPTER[+ADAPTER...] into BASE and write a standalone transformers model.

    BASE is a local model directory written as a path (./x, /x, ~/x) or a hub
    ref (owner/name[@revision]), pulled through the cache. Each ADAPTER is a
    local directory written as a path (./x, /x, ~/x) or
    a hub ref (name, owner/name[@revision]); several are composed first. The merge streams over BASE's safetensors
    shards without loading the model.
    """
    from peft_hub.gpu_runtime.materializer import materialize as run

    if output_dir is None:
        output_dir = f"{Path(base.partition('@')[0]).name}-merged" + ("" if quantize == "none" else f"-{quantize}")
    report = run(base, adapters, output_dir, weights=weights, method=method, rank=rank, density=density, dtype=dtype,
                 quantize=quantize, device=device, client=hub, force=force)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str))
        return
    click.echo(
        f"{report.output_dir}: {report.merged} tensors merged, {report.copied} copied, {report.cast} cast, "
        f"{report.quantized} quantized ({report.quantization}); {report.dtype}, {report.shards} shard(s), "
        f"{human_size(report.bytes_written)} on {report.device} in {report.seconds:.1f}s"
    )


@click.command("validate")
@click.argument("base")
@click.argument("adapters", metavar="[ADAPTER[,ADAPTER...]]", required=False, default="")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help='JSONL of {"text"} or {"prompt", "completion"} rows.')
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False), default=None,
              help='JSONL of {"prompt", "reference"} rows for greedy exact match.')
@click.option("--quantize", type=QUANT, default="none", show_default=True, help="Load the base quantized.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="A seeded subset of each file.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Generation budget (default: longest reference + 2).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--dtype", type=DTYPE, default=None, help="Compute dtype (default: bf16 on CUDA, fp32 on CPU).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--split", default="validation", show_default=True, help="Recorded with each result.")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), default=None,
              help="Tokenizer directory (default: BASE).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON.")
@click.option("--push-evals", is_flag=True, help="Attach each adapter's results to its hub revision.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def validate(hub: Any, base: str, adapters: str, data: str, prompts: str | None, quantize: Quantization,
             batch_size: int, max_samples: int | None, max_new_tokens: int | None, device: str, dtype: str | None,
             seed: int, split: str, tokenizer: str | None, output: str | None, push_evals: bool, as_json: bool) -> None:
    """Compare BASE with BASE+ADAPTER on loss, perplexity, token accuracy and exact match.

    Several adapters, comma-separated, are compared in one table; an entry
    A+B is composed first.
    """
    from peft_hub.gpu_runtime.validator import validate as run

    report = run(base, adapters, data=data, prompts=prompts, quantize=quantize, batch_size=batch_size,
                 max_samples=max_samples, max_new_tokens=max_new_tokens, device=device, dtype=dtype, seed=seed,
                 split=split, tokenizer=tokenizer, client=hub, output=output, push_evals=push_evals)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str))
        return
    click.echo(f"{report.dataset['name']} ({report.dataset['rows']} rows), {report.device}, {report.dtype}, "
               f"quantization {report.quantization}")
    click.echo(report.format_table())
    if output:
        click.echo(f"Wrote {output}")
    for name in report.pushed:
        click.echo(f"Pushed evals for {name}")


@click.command("demo")
@click.option("-w", "--workdir", type=click.Path(file_okay=False), default="peft-hub-demo", show_default=True,
              help="Where everything is written (must be empty).")
@click.option("--offline", is_flag=True, help="Skip the hub: no push, no pull, no eval upload.")
@click.option("--namespace", default="demo", show_default=True, help="Hub owner for the pushed adapters.")
@click.option("--pretrain-steps", type=click.IntRange(min=1), default=None, help="Base pretraining steps.")
@click.option("--lora-steps", type=click.IntRange(min=1), default=None, help="Steps per LoRA.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def demo(hub: Any, workdir: str, offline: bool, namespace: str, pretrain_steps: int | None,
         lora_steps: int | None, device: str, as_json: bool) -> None:
    """Pretrain a tiny model, train two LoRAs, push, compose, materialize and validate them.

    Runs on the CPU in a few minutes. Needs a running hub unless --offline.
    """
    from peft_hub.gpu_runtime.demo import run_demo

    given = (("pretrain_steps", pretrain_steps), ("lora_steps", lora_steps))
    steps: dict[str, Any] = {k: v for k, v in given if v is not None}  # unset: run_demo's defaults
    report = run_demo(workdir, None if offline else hub, namespace=namespace, device=device,
                      log=lambda msg: click.echo(msg, err=True), **steps)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str))
        return
    click.echo(report.format_table())
    click.echo(f"Done in {report.seconds:.0f}s; report: {Path(workdir) / 'demo_report.json'}")


COMMANDS = [materialize, validate, demo]
