"""``peft-hub compose`` / ``interpolate`` through click, ref resolution, and import boundaries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_compose_support import adapter, assert_deltas_close, base, lineage_of, peft_deltas, weighted_sum

from peft_hub.client import PulledAdapter, PushResult
from peft_hub.compose import cli as compose_cli
from peft_hub.errors import ComposeError, InvalidInputError, RankLimitError
from peft_hub.refs import default_output, resolve_ref, split_refs

REV = "0123456789abcdef0123456789abcdef01234567"


class FakeClient:
    """Stands in for HubClient: pull maps names to local dirs, push records its call."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs, self.pushed = dirs, []

    def pull(self, ref: str) -> PulledAdapter:
        name = ref.split("@")[0]
        repo_id = name if "/" in name else f"me/{name}"
        return PulledAdapter(self.dirs[repo_id], repo_id, REV)

    def push(self, path: Path, *, name: str) -> PushResult:
        self.pushed.append((Path(path), name))
        return PushResult(name, "f" * 40, True, 0, 0)


def _run(args: list[str], obj=None, command=compose_cli.compose):
    return CliRunner().invoke(command, args, obj=obj, catch_exceptions=True)


def test_compose_local_dirs(tmp_path):
    a, b = adapter(r=4, seed=1), adapter(r=4, seed=2)
    out = tmp_path / "out"
    result = _run([f"{a}+{b}", "--weights", "0.7,0.3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Wrote {out} (stack" in result.output and "--max-lora-rank 8" in result.output
    assert_deltas_close(peft_deltas(base(), out), weighted_sum(base(), [a, b], [0.7, 0.3]))
    parents = lineage_of(out)["parents"]
    assert [p["ref"] for p in parents] == [str(a), str(b)] and parents[0]["revision"] is None


def test_negative_weights_and_svd_report(tmp_path):
    a, b = adapter(r=4, seed=1), adapter(r=4, seed=2)
    out = tmp_path / "out"
    result = _run([f"{a}+{b}", "--weights", "-0.5,1", "--method", "svd", "--rank", "3", "--dtype", "bf16",
                   "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Least energy kept:" in result.output and "rank 3, bf16" in result.output
    assert lineage_of(out)["params"]["weights"] == [-0.5, 1.0]


def test_rank_limit_error_reaches_the_caller(tmp_path):
    result = _run([f"{adapter(r=8, seed=1)}+{adapter(r=8, seed=2)}", "--max-rank", "8", "-o", str(tmp_path / "o")])
    assert isinstance(result.exception, RankLimitError) and result.exit_code != 0


def test_bad_weights_flag(tmp_path):
    result = _run([f"{adapter(r=4, seed=1)}", "--weights", "a,b", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "comma-separated numbers" in result.output


def test_hub_refs_and_push(tmp_path, monkeypatch):
    client = FakeClient({"me/support": adapter(r=4, seed=1), "team/legal": adapter(r=2, seed=2)})
    monkeypatch.chdir(tmp_path)
    result = _run(["support+team/legal@v1", "--weights", "0.7,0.3", "--push", "me/mixed"], obj=client)
    assert result.exit_code == 0, result.output
    out = Path("support+legal.stack")
    assert (tmp_path / out / "adapter_config.json").exists()
    parents = lineage_of(tmp_path / out)["parents"]
    assert [(p["ref"], p["revision"]) for p in parents] == [("me/support", REV), ("team/legal", REV)]
    assert client.pushed == [(out, "me/mixed")] and "Pushed me/mixed at revision fff" in result.output


def test_interpolate_command(tmp_path):
    a, b = adapter(r=4, seed=1), adapter(r=4, seed=2)
    out = tmp_path / "mid"
    result = _run([str(a), str(b), "--t", "0.25", "-o", str(out)], command=compose_cli.interpolate)
    assert result.exit_code == 0, result.output
    assert_deltas_close(peft_deltas(base(), out), weighted_sum(base(), [a, b], [0.75, 0.25]))
    assert lineage_of(out)["method"] == "interpolate"


def test_svd_flag(tmp_path):
    a, b = adapter(r=4, seed=1), adapter(r=4, seed=2)
    out = tmp_path / "ties"
    result = _run([f"{a}+{b}", "--method", "ties", "--density", "0.5", "--rank", "4", "--svd", "randomized",
                   "--seed", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Truncation: randomized SVD on 14 modules" in result.output
    params = lineage_of(out)["params"]
    assert (params["svd"], params["seed"]) == ("randomized", 3)
    bad = _run([f"{a}+{b}", "--method", "ties", "--density", "0.5", "--svd", "fast", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "'fast' is not one of" in bad.output
    exact = _run([str(a), str(b), "--t", "0.5", "--rank", "2", "--svd", "exact", "-o", str(tmp_path / "i")],
                 command=compose_cli.interpolate)
    assert exact.exit_code == 0, exact.output
    refused = _run([str(a), str(b), "--t", "0.5", "--rank", "2", "--svd", "randomized", "-o", str(tmp_path / "j")],
                   command=compose_cli.interpolate)
    assert isinstance(refused.exception, ComposeError) and not (tmp_path / "j").exists()
    for command in (compose_cli.compose, compose_cli.interpolate):
        assert next(p for p in command.params if p.name == "svd").default == "auto"


def test_push_without_client(tmp_path):
    result = _run([str(adapter(r=4, seed=1)), "-o", str(tmp_path / "o"), "--push", "me/x"])
    assert isinstance(result.exception, InvalidInputError)


def test_root_cli_prints_one_line_errors(tmp_path):
    try:
        from peft_hub.cli import cli
    except ImportError as exc:  # other parts of the CLI are still being written
        pytest.skip(f"root CLI not importable yet: {exc}")
    result = CliRunner().invoke(cli, ["compose", f"{adapter(r=8, seed=1)}+{adapter(r=8, seed=2)}",
                                      "--max-rank", "8", "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "Error: stacking exactly gives rank 16" in result.output


def test_resolver(tmp_path):
    local = adapter(r=4, seed=1)
    assert resolve_ref(str(local), None).parent() == {"ref": str(local), "revision": None}
    assert split_refs("a+b+owner/c@main") == ["a", "b", "owner/c@main"]
    plus_dir = tmp_path / "x+y"
    plus_dir.mkdir()
    assert split_refs(str(plus_dir)) == [str(plus_dir)]
    with pytest.raises(InvalidInputError):
        split_refs("a++b")
    with pytest.raises(InvalidInputError, match="no hub client"):
        resolve_ref("owner/missing", None)
    assert default_output(["owner/a@v2", "/x/b"], "svd") == Path("a+b.svd")


def test_methods_match_the_library():
    from peft_hub.compose.api import METHODS
    from peft_hub.compose.lowrank import TRUNCATIONS

    assert compose_cli.METHODS == METHODS
    assert compose_cli.TRUNCATIONS == TRUNCATIONS


@pytest.mark.parametrize(("module", "forbidden"), [
    ("peft_hub.compose.cli", ["torch", "transformers", "peft"]),
    ("peft_hub.compose.api", ["transformers", "peft"]),
])
def test_import_boundaries(module, forbidden):
    code = f"import sys, json, {module}; print(json.dumps([m for m in {forbidden!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
