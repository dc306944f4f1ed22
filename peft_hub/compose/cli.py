"""``peft-hub compose`` and ``peft-hub interpolate``.

These parse flags, resolve refs, call one library function and print. Torch is
imported only inside the commands, so the CLI starts without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from peft_hub.compose.spec import DEFAULT_MAX_RANK, DTYPE_NAMES, MAJORITY_SIGNS, METHODS, TRUNCATIONS
from peft_hub.errors import InvalidInputError
from peft_hub.refs import default_output, in_user_terms, resolve_ref, split_refs

SHOWN_MODULES = 5


def _parse_weights(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated numbers, e.g. 0.7,0.3") from None


def _print_report(report: Any) -> None:
    vllm = report.vllm_max_lora_rank
    click.echo(
        f"Wrote {report.output_dir} ({report.method}, {len(report.module_ranks)} modules, rank {report.rank}, "
        f"{report.dtype}); energy kept {report.energy_kept:.6f}"
    )
    if report.truncation:
        how = ", ".join(f"{kind} SVD on {n} module{'s' if n != 1 else ''}"
                        for kind, n in sorted(report.truncation.items()))
        click.echo(f"Truncation: {how}")
    worst = sorted(report.module_energy.items(), key=lambda kv: kv[1])[:SHOWN_MODULES]
    if worst and worst[0][1] < 1.0:
        click.echo("Least energy kept:")
        for name, fraction in worst:
            click.echo(f"  {fraction:.6f}  {name}")
    click.echo(f"vLLM: --max-lora-rank {vllm}" if vllm
               else f"vLLM: rank {report.rank} is above vLLM's largest --max-lora-rank")


def _print_json(report: Any) -> None:
    fields = ("output_dir", "method", "rank", "max_rank", "dtype", "energy_kept", "module_ranks", "truncation",
              "vllm_max_lora_rank", "lineage", "seconds")
    click.echo(json.dumps({k: getattr(report, k, None) for k in fields}, indent=2, sort_keys=True, default=str))


def _push(client: Any, out_dir: Path, name: str) -> None:
    if client is None:
        raise InvalidInputError("--push needs a hub client")
    result = client.push(out_dir, name=name)
    repo_id, revision = getattr(result, "repo_id", None), getattr(result, "revision", None)
    click.echo(f"Pushed {repo_id} at revision {revision}" if repo_id else str(result))


def _output_options(fn: Any) -> Any:
    for option in reversed([
        click.option("--rank", type=click.IntRange(min=1), default=None, help="Truncate to this rank."),
        click.option("--svd", type=click.Choice(TRUNCATIONS), default="auto", show_default=True,
                     help="How ties/dare/magnitude_prune truncate their dense result to --rank: exact SVD, randomized "
                          "SVD, or auto (exact when min(d, k) <= 1024). stack/svd/interpolate are exact from the "
                          "factors at any size and refuse randomized."),
        click.option("--max-rank", type=click.IntRange(min=1), default=DEFAULT_MAX_RANK, show_default=True,
                     help="Refuse outputs of a higher rank."),
        click.option("--dtype", type=click.Choice(DTYPE_NAMES), default=None,
                     help="Output dtype (default: the inputs')."),
        click.option("--force", is_flag=True, help="Compose adapters that declare different base models."),
        click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Output directory (default: NAME+NAME.METHOD here)."),
        click.option("--into-existing", is_flag=True,
                     help="Write into a non-empty output directory that holds something else (nothing is deleted)."),
        click.option("--push", metavar="OWNER/NAME", default=None, help="Push the result to the hub under this name."),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
    ]):
        fn = option(fn)
    return fn


@click.command()
@click.argument("adapters", metavar="A+B[+C...]")
@click.option("--weights", callback=_parse_weights, default=None,
              help="One weight per adapter, e.g. 0.7,0.3 (default 1 each).")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="Default: stack exactly if the result fits --max-rank, svd if --rank is given.")
@click.option("--density", type=float, default=None, help="Fraction kept, for ties/dare/magnitude_prune.")
@click.option("--majority-sign", type=click.Choice(MAJORITY_SIGNS), default="total", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the DARE methods and the randomized SVD.")
@_output_options
@click.pass_obj
def compose(
    client: Any, adapters: str, weights: list[float] | None, method: str | None, density: float | None,
    majority_sign: str, seed: int, rank: int | None, svd: str, max_rank: int, dtype: str | None, force: bool,
    output: Path | None, into_existing: bool, push: str | None, as_json: bool,
) -> None:
    """Combine adapters: ΔW = Σ wᵢ·ΔWᵢ, exactly (stack) or truncated (svd, ties, dare_*, magnitude_prune).

    A, B, ... are local directories when written as paths (./support,
    ../x, /abs, ~/x); name and owner/name[@rev] always mean the hub.
    """
    from peft_hub.compose.api import compose_dirs

    resolved = [resolve_ref(ref, client) for ref in split_refs(adapters)]
    out = output or default_output([r.ref for r in resolved], method or ("svd" if rank else "stack"))
    with in_user_terms(resolved):
        report = compose_dirs(
            [r.path for r in resolved], weights, out, method=method, rank=rank, max_rank=max_rank, density=density,
            majority_sign=majority_sign, seed=seed, svd=svd, dtype=dtype, force=force,
            parents=[r.parent() for r in resolved], into_existing=into_existing,
        )
    _print_json(report) if as_json else _print_report(report)
    if push:
        _push(client, report.output_dir, push)


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--t", "t", type=float, default=0.5, show_default=True, help="0 gives A, 1 gives B.")
@click.option("--extrapolate", is_flag=True, help="Allow --t outside [0, 1].")
@_output_options
@click.pass_obj
def interpolate(
    client: Any, a: str, b: str, t: float, extrapolate: bool, rank: int | None, svd: str, max_rank: int,
    dtype: str | None, force: bool, output: Path | None, into_existing: bool, push: str | None, as_json: bool,
) -> None:
    """Blend two adapters: ΔW = (1 − t)·ΔW_A + t·ΔW_B, exact unless --rank is given.

    A and B follow compose's rule: paths (./x, /x, ~/x) are local, names are the hub.
    """
    if not extrapolate and not 0.0 <= t <= 1.0:  # also refuses NaN
        raise InvalidInputError(f"--t {t:g} is outside [0, 1]; pass --extrapolate to go beyond A or B")
    from peft_hub.compose.api import interpolate_dirs

    ra, rb = resolve_ref(a, client), resolve_ref(b, client)
    out = output or default_output([ra.ref, rb.ref], f"interp{t:g}")
    with in_user_terms([ra, rb]):
        report = interpolate_dirs(
            ra.path, rb.path, t, out, rank=rank, max_rank=max_rank, svd=svd, dtype=dtype, force=force,
            parents=[ra.parent(), rb.parent()], into_existing=into_existing,
        )
    _print_json(report) if as_json else _print_report(report)
    if push:
        _push(client, report.output_dir, push)


COMMANDS = [compose, interpolate]
