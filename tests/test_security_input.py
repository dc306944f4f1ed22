"""Hostile input, class by class: every malformed request gets a 4xx with a
stable error code and a one-line message, fast, and leaves the database and
the blob store as they were. No 5xx, no hang, no dropped connection.

1. nesting (JSON bodies, adapter_config.json, safetensors headers, lineage,
   card YAML, HF commit lines); 2. wrong types and hostile regexes in configs;
3. control characters and overlong names; 4. numbers out of range;
5. body size caps; 6. model card rendering cost; 7. no /docs.

The parser tests need no hub; the request tests run on SQLite + local files
and on PostgreSQL + SeaweedFS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hub_state import snapshot as state

from peft_hub.adapter import parse_config, parse_lineage, pattern_value
from peft_hub.adapter_files import validate_filename
from peft_hub.errors import InvalidAdapterError, InvalidInputError, InvalidNameError
from peft_hub.names import validate_namespace, validate_repo_id
from peft_hub.safeparse import json_depth, load_yaml, loads_json
from peft_hub.safetensors_header import read_header

DEEP = 100_000
MiB = 1024 * 1024


# --- helpers ---------------------------------------------------------------------


def _safetensors(tensors: dict[str, list[int]], metadata: dict[str, str] | None = None, header: Any = None) -> bytes:
    """A zero-filled F32 safetensors file (or one with exactly ``header``)."""
    if header is None:
        header, offset = {}, 0
        for name, shape in tensors.items():
            size = 4
            for d in shape:
                size *= d
            header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
        if metadata:
            header["__metadata__"] = metadata
        data = b"\0" * offset
    else:
        data = b""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _lora(r: int = 4, module: str = "base_model.model.layers.0.self_attn.q_proj", **config: Any) -> dict[str, bytes]:
    """A tiny, valid LoRA adapter as {file name: bytes}; ``config`` overrides fields."""
    base = {"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM",
            "base_model_name_or_path": "tiny-llama", "rank_pattern": {}, "alpha_pattern": {}}
    base.update(config)
    weights = _safetensors({f"{module}.lora_A.weight": [r, 8], f"{module}.lora_B.weight": [8, r]})
    return {"adapter_config.json": json.dumps(base).encode(), "adapter_model.safetensors": weights}


def _spec(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [{"path": n, "sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in sorted(files.items())]


def _auth(hub) -> dict[str, str]:
    return {"Authorization": f"Bearer {hub.admin_token}"}


def _upload(hub, repo: str, files: dict[str, bytes]) -> None:
    """Preupload and send every blob, as the client does (local PUT or presigned S3)."""
    with httpx.Client(base_url=hub.url, headers=_auth(hub), timeout=60) as http:
        plan = http.post(f"/api/adapters/{repo}/preupload", json={"files": _spec(files)})
        assert plan.status_code == 200, plan.text
        by_sha = {hashlib.sha256(b).hexdigest(): b for b in files.values()}
        for item in plan.json()["uploads"]:
            headers = dict(item["headers"]) | (_auth(hub) if item["auth"] else {})
            r = httpx.request(item["method"], item["url"], content=by_sha[item["sha256"]], headers=headers, timeout=60)
            assert r.status_code < 300, r.text


def _native_push(hub, repo: str, files: dict[str, bytes]) -> tuple[httpx.Response, dict, dict]:
    """Upload ``files``, then commit them; returns the commit response and the
    state just before and just after the commit."""
    _upload(hub, repo, files)
    before = state(hub)
    r = httpx.post(f"{hub.url}/api/adapters/{repo}/commit", json={"files": _spec(files)}, headers=_auth(hub),
                   timeout=60)
    return r, before, state(hub)


def refused(r: httpx.Response, status: int, *codes: str) -> dict[str, Any]:
    """Assert the hub's error shape: status, a known code, a short one-line message, safe headers."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert body["error"] in codes, body
    assert isinstance(body["detail"], str) and "\n" not in body["detail"] and len(body["detail"]) <= 2000
    header = r.headers.get("x-error-message", "")
    assert "\r" not in header and "\n" not in header and len(header) <= 200 and header.isascii()
    return body


def _ndjson(*lines: Any) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def _hf_commit(hub, repo: str, files: dict[str, bytes], summary: str = "hostile") -> httpx.Response:
    ops = [{"key": "file", "value": {"path": n, "encoding": "base64", "content": base64.b64encode(b).decode()}}
           for n, b in sorted(files.items())]
    body = _ndjson({"key": "header", "value": {"summary": summary}}, *ops)
    return httpx.post(f"{hub.url}/api/models/{repo}/commit/main", content=body, timeout=60,
                      headers={**_auth(hub), "Content-Type": "application/x-ndjson"})


# --- 1. nesting: the parsers themselves --------------------------------------------


def test_json_depth_is_measured_in_linear_time_and_skips_strings():
    start = time.perf_counter()
    assert json_depth(b"[" * DEEP + b"]" * DEEP) == DEEP
    assert json_depth(json.dumps({"a": "[[[[\\\"[[[{{{", "b": [[1], {"c": "]]]"}]}).encode()) == 3
    assert json_depth(b'{"k": "\\\\"}') == 1  # an escaped backslash ends the string
    big = json.dumps({f"t{i}": {"shape": [4, 4], "data_offsets": [0, 64]} for i in range(100_000)}).encode()
    assert json_depth(big) == 3
    assert time.perf_counter() - start < 10  # a hang guard, not a speed target (bench/ measures speed)


@pytest.mark.parametrize("text", [
    b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP, b"[" * DEEP,
    b"[" * 65 + b"]" * 65, b'[NaN]', b'[Infinity]', b'{"x": -Infinity}', b"[1e999]", b"[" + b"9" * 5000 + b"]",
    b"\xff\xfe", b"{not json",
])
def test_loads_json_refuses_what_the_parser_would_choke_on(text):
    start = time.perf_counter()
    with pytest.raises(InvalidAdapterError) as err:
        loads_json(text, what="x.json", error=InvalidAdapterError)
    assert time.perf_counter() - start < 5 and "x.json" in err.value.message and "\n" not in err.value.message


def test_loads_json_keeps_valid_input_and_strict_strings_refuse_nul():
    assert loads_json(b"[" * 64 + b"]" * 64) == json.loads("[" * 64 + "]" * 64)
    assert loads_json('{"a": "[{\\"", "b": 1.5}') == {"a": '[{"', "b": 1.5}
    with pytest.raises(InvalidInputError, match="NUL"):
        loads_json(b'{"summary": "a\\u0000b"}', strict_strings=True)
    with pytest.raises(InvalidInputError, match="surrogate"):
        loads_json(b'{"k\\ud800": 1}', strict_strings=True)


BILLION_LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
)


@pytest.mark.parametrize("text, problem", [
    (BILLION_LAUGHS, "expands"),
    ("a: &a [*a]", "recursive"),
    ("x: " + "[" * DEEP, "nested"),
    ("x:\n" + "".join("  " * i + "- \n" for i in range(200)), "nested"),
    ("\n".join(f"k{i}: *a" for i in range(200)).replace("k0: *a", "k0: &a x"), "aliases"),
    ("a: !!python/object/apply:os.system [id]", "not valid YAML"),
    ("a: 1" + "0" * 5000, "out of range"),
])
def test_yaml_is_bounded_before_it_is_built(text, problem):
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match=problem):
        load_yaml(text, what="card")
    assert time.perf_counter() - start < 5  # hang guards here, not speed targets


def test_yaml_output_is_plain_json_and_aliases_stay_small():
    data = load_yaml("a: .nan\nb: 2024-01-02\nc: !!binary aGk=\n1: x\nd: &d {k: v}\ne: *d\nf: !!set {p}")
    assert data == {"a": "nan", "b": "2024-01-02", "c": "aGk=", "1": "x", "d": {"k": "v"}, "e": {"k": "v"}, "f": ["p"]}
    json.dumps(data, allow_nan=False)


def test_safetensors_headers_and_lineage_are_bounded():
    deep_header = b'{"__metadata__": {"a": ' + b"[" * DEEP + b"]" * DEEP + b"}}"
    with pytest.raises(InvalidAdapterError, match="nested"):
        read_header(_io(_safetensors({}, header=deep_header)), len(_safetensors({}, header=deep_header)))
    for bad in ({"t": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}},
                {"t": {"dtype": "F32", "shape": [10**30] * 12, "data_offsets": [0, 4]}},
                {"t": {"dtype": "F4", "shape": [True], "data_offsets": [0, 1]}}):
        raw = _safetensors({}, header=bad)
        with pytest.raises(InvalidAdapterError):
            read_header(_io(raw), len(raw))
    with pytest.raises(InvalidAdapterError, match="longer than"):
        parse_lineage("[" * DEEP + "]" * DEEP)
    with pytest.raises(InvalidAdapterError, match="nested"):
        parse_lineage("[" * 10_000 + "]" * 10_000)
    for bad in ("[]", '{"parents": {"ref": "x"}}', '{"parents": [{"ref": ["x"]}]}',
                '{"parents": [{"ref": "a/b", "weight": true}]}',
                '{"parents": [{"ref": "a/b", "revision": "main"}]}', '{"method": "' + "m" * 40 + '"}',
                '{"parents": [{"ref": "a\\u0000b"}]}', '{"parents": [{"ref": "a/b", "weight": 1e999}]}'):
        with pytest.raises(InvalidAdapterError):
            parse_lineage(bad)
    ok = {"method": "stack", "params": {"k": 1},
          "parents": [{"ref": "a/b", "revision": None, "sha256": "0" * 64, "weight": 0.5}]}
    assert parse_lineage(json.dumps(ok)) == ok


def _io(data: bytes):
    import io

    return io.BytesIO(data)


# --- 2. wrong types and hostile regexes in configs ---------------------------------------


def _config(**fields: Any) -> bytes:
    return json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"], **fields}).encode()


@pytest.mark.parametrize("fields", [
    {"peft_type": ["LORA"]}, {"peft_type": {"x": 1}}, {"r": [8]}, {"r": True}, {"r": -1}, {"r": 0}, {"r": 10**12},
    {"r": 8.5}, {"r": "8"}, {"lora_alpha": "16"}, {"lora_alpha": [1]}, {"lora_alpha": 10**30},
    {"target_modules": 5}, {"target_modules": [1, 2]}, {"target_modules": ["q\x00proj"]},
    {"target_modules": ["x" * 300]},
    {"rank_pattern": ["q_proj"]}, {"rank_pattern": {"q_proj": "4"}}, {"rank_pattern": {"q_proj": True}},
    {"rank_pattern": {"q_proj": 10**9}}, {"alpha_pattern": {"q_proj": "x"}}, {"alpha_pattern": []},
    {"rank_pattern": {"(a)\\1": 4}}, {"rank_pattern": {"(?=q)": 4}}, {"rank_pattern": {"[": 4}},
    {"rank_pattern": {"x" * 600: 4}}, {"rank_pattern": {f"k{i}": 4 for i in range(2000)}},
    {"base_model_name_or_path": ["a"]}, {"base_model_name_or_path": "a\nb"}, {"base_model_name_or_path": "m" * 600},
    {"task_type": {"a": 1}}, {"use_dora": "yes"}, {"use_rslora": 1}, {"num_virtual_tokens": -5},
])
def test_wrong_types_in_configs_are_clear_errors(fields):
    with pytest.raises(InvalidAdapterError) as err:
        parse_config(_config(**fields))
    assert "adapter_config.json" in err.value.message


def test_unsupported_regex_says_why():
    with pytest.raises(InvalidAdapterError, match="linear time"):
        parse_config(_config(rank_pattern={"(q)\\1_proj": 4}))


def test_catastrophic_pattern_finishes_fast():
    module = "model.layers.0." + "a" * 50_000 + "!"
    start = time.perf_counter()
    assert pattern_value({"(a|a)+$": 2, "(a+)+b": 3, "q_proj": 4}, module, 8) == 8
    assert pattern_value({"(a|a)+!": 2}, module, 8) == 2
    assert time.perf_counter() - start < 5
    # PEFT's rule is kept: first key in order wins; literal and regex keys mix.
    patterns = {"layers\\.1\\.q_proj": 1, "q_proj": 2, r"layers\.[0-9]+\.q_proj": 3}
    assert [pattern_value(patterns, f"m.layers.{i}.q_proj", 8) for i in (1, 2)] == [1, 2]
    assert pattern_value({"x": 1, r".*\.q_proj": 5}, "m.q_proj", 8) == 5
    assert pattern_value({"proj": 1}, "m.q_proj", 8) == 8  # only at a "." boundary


# --- 3. names: control characters, trailing newlines, NUL, length ---------------------------


# Capitals are allowed (kept as typed, found in any case); non-ASCII look-alikes are not.
BAD_NAMES = ["alice\n", "ali\x00ce", "al\rice", "a" * 300, "alice\t", "ali\u0085ce", "\u212aelvin", "stra\u00dfe", ""]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name):
    with pytest.raises(InvalidNameError):
        validate_namespace(name)
    with pytest.raises(InvalidNameError):
        validate_repo_id(f"{name}/x")
    with pytest.raises(InvalidNameError):
        validate_namespace(["alice"])  # a JSON list where a name belongs


@pytest.mark.parametrize("path", ["notes.txt\n", "no\x00tes.txt", "no\ntes.txt", "n\x1b[31m.txt", "x" * 300 + ".txt",
                                  "é" * 200 + ".txt", "a\ud800.txt", "x.bin", "../x.txt"])
def test_bad_file_names_are_refused(path):
    with pytest.raises(InvalidAdapterError):
        validate_filename(path)


def test_tags_refuse_trailing_newline_and_controls():
    from peft_hub.hub import crud

    assert crud.validate_tag("v1") == "v1"
    for tag in ("v1\n", "v\x001", "v" * 65, "a" * 40 + "\n", ["v1"]):
        with pytest.raises(InvalidInputError):
            crud.validate_tag(tag)
    assert crud.SHA_RE.match("a" * 40 + "\n") is None


def test_error_headers_are_header_safe():
    from starlette.requests import Request

    from peft_hub.hub.app import render_error

    request = Request({"type": "http", "method": "GET", "headers": [], "path": "/", "query_string": b""})
    response = render_error(request, InvalidInputError("bad\r\nX-Injected: 1\x00é" + "x" * 5000))
    header = response.headers["x-error-message"]
    assert "\r" not in header and "\n" not in header and header.isascii() and len(header) <= 200
    assert "\n" not in json.loads(response.body)["detail"]


# --- against a live hub ----------------------------------------------------------------


def test_deeply_nested_json_bodies_are_422_before_any_route(hub):
    deep = b"[" * DEEP + b"]" * DEEP
    deep_object = b'{"files": ' + deep + b"}"
    targets = [
        ("POST", "/api/adapters/admin/x/preupload"), ("POST", "/api/adapters/admin/x/commit"),
        ("POST", "/api/adapters/admin/x/evals"), ("PUT", "/api/adapters/admin/x/tags/v1"),
        ("POST", "/api/tokens"), ("POST", "/api/admin/gc"), ("POST", "/api/repos/create"),
        ("POST", "/api/validate-yaml"), ("POST", "/api/models/admin/x/preupload/main"),
        ("POST", "/admin/x.git/info/lfs/objects/batch"),
    ]
    before = state(hub)
    with httpx.Client(base_url=hub.url, timeout=30) as http:
        for method, path in targets:
            for body, headers in ((deep, {"Content-Type": "application/json"}), (deep_object, {})):
                start = time.perf_counter()
                r = http.request(method, path, content=body, headers={**headers, **_auth(hub)})
                refused(r, 422, "invalid_input")
                assert time.perf_counter() - start < 5
            # Unauthenticated too: the check runs before any token is looked at.
            refused(http.request(method, path, content=deep), 422, "invalid_input")
    assert state(hub) == before


def test_deep_commit_line_and_nul_summary_are_refused_before_anything_is_stored(hub):
    httpx.post(f"{hub.url}/api/repos/create", json={"name": "deep"}, headers=_auth(hub)).raise_for_status()
    before = state(hub)
    config = {"key": "file", "value": {"path": "adapter_config.json", "content": base64.b64encode(b"{}").decode()}}
    for body in (_ndjson(b"[" * DEEP + b"]" * DEEP),
                 _ndjson({"key": "header", "value": {"summary": "x", "x": json.loads("[" * 60 + "]" * 60)}},
                         b'{"a":' * 70 + b"1" + b"}" * 70),
                 _ndjson({"key": "header", "value": {"summary": "a\x00b"}}, config),
                 _ndjson({"key": "header", "value": {"summary": "ok"}}, b'{"key": "file", "value": NaN}')):
        r = httpx.post(f"{hub.url}/api/models/admin/deep/commit/main", content=body, headers=_auth(hub), timeout=30)
        refused(r, 422, "invalid_input")
    assert state(hub) == before


HOSTILE_ADAPTERS = {
    "deep config": lambda: {
        **_lora(), "adapter_config.json": b'{"peft_type": "LORA", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}"},
    "deep header": lambda: {**_lora(), "adapter_model.safetensors": _safetensors(
        {}, header=b'{"__metadata__": {"a": ' + b"[" * DEEP + b"]" * DEEP + b"}}")},
    "deep lineage": lambda: {**_lora(), "adapter_model.safetensors": _safetensors(
        {"m.q_proj.lora_A.weight": [4, 8], "m.q_proj.lora_B.weight": [8, 4]},
        {"peft_hub.lineage": "[" * DEEP + "]" * DEEP})},
    "lineage of the wrong shape": lambda: {**_lora(), "adapter_model.safetensors": _safetensors(
        {"m.q_proj.lora_A.weight": [4, 8], "m.q_proj.lora_B.weight": [8, 4]},
        {"peft_hub.lineage": json.dumps({"parents": [{"ref": "a/b", "revision": "x" * 41, "weight": "heavy"}]})})},
    "deep extra json": lambda: {**_lora(), "tokenizer_config.json": b"[" * DEEP + b"]" * DEEP},
    "alias bomb card": lambda: {**_lora(), "README.md": f"---\n{BILLION_LAUGHS}\n---\n# Card\n".encode()},
    "deep card yaml": lambda: {**_lora(), "README.md": b"---\nx: " + b"[" * DEEP + b"\n---\n# Card\n"},
    "NUL in card": lambda: {**_lora(), "README.md": b"# Card\n\x00\n"},
    "list rank": lambda: _lora(r=4) | {"adapter_config.json": _config(r=[4])},
    "bool rank": lambda: _lora(r=1) | {"adapter_config.json": _config(r=True)},
    "huge rank": lambda: _lora(r=4) | {"adapter_config.json": _config(r=2**40)},
    "backreference pattern": lambda: _lora(rank_pattern={"(q)\\1": 4}),
    "NUL in base model": lambda: _lora(base_model_name_or_path="tiny\x00llama"),
    "dict target modules": lambda: _lora(target_modules={"q_proj": True}),
    "NaN alpha": lambda: {**_lora(), "adapter_config.json": _config().replace(b'"r": 8', b'"r": 4, "lora_alpha": NaN')},
}


@pytest.mark.parametrize("case", list(HOSTILE_ADAPTERS))
def test_hostile_adapters_are_refused_by_the_native_commit(hub, case):
    files = HOSTILE_ADAPTERS[case]()
    start = time.perf_counter()
    r, before, after = _native_push(hub, f"admin/{case.lower().replace(' ', '-')}", files)
    refused(r, 422, "invalid_adapter")
    assert after == before  # no revision, no tag, no adapter row, no blob written by the commit
    assert time.perf_counter() - start < 20


def test_hostile_adapters_are_refused_by_the_hf_commit(hub):
    httpx.post(f"{hub.url}/api/repos/create", json={"name": "hf-hostile"}, headers=_auth(hub)).raise_for_status()
    before = state(hub)
    for case in ("deep config", "deep header", "alias bomb card", "list rank", "lineage of the wrong shape"):
        r = _hf_commit(hub, "admin/hf-hostile", HOSTILE_ADAPTERS[case]())
        refused(r, 422, "invalid_adapter")
        # Inline files arrive before the commit is judged; a refused commit takes back what it stored.
        assert state(hub) == before, case


def test_catastrophic_rank_pattern_with_a_long_module_is_refused_fast(hub):
    """The hub's own matching runs on RE2 (no backtracking), so it answers at
    once; and it refuses the push, since PEFT matches these keys with Python's
    re and would hang every process that loads the adapter."""
    module = "base_model.model." + "a" * 20_000 + ".q_proj"
    files = _lora(r=4, module=module, rank_pattern={"(a|a)+$": 2, "(a|aa)+(b|bb)+$": 3})
    start = time.perf_counter()
    r, before, after = _native_push(hub, "admin/redos", files)
    refused(r, 422, "invalid_adapter")
    assert "rank_pattern" in r.json()["detail"]
    assert time.perf_counter() - start < 10
    assert len(after["rows"]["revision"]) == len(before["rows"]["revision"])


def test_control_characters_and_long_names_in_ids_tags_and_paths(hub):
    good = _lora()
    _native_push(hub, "admin/ok", good)[0].raise_for_status()
    before = state(hub)
    with httpx.Client(base_url=hub.url, headers=_auth(hub), timeout=30) as http:
        for name in ("bad%0A", "bad%00x", "bad%0D%0AX-Evil:%201", "b%09ad", "a" * 300, "bad%C2%85"):
            r = http.post(f"/api/adapters/admin/{name}/commit", json={"files": _spec(good)})
            refused(r, 422, "invalid_input", "invalid_name")
            hf = http.get(f"/api/models/admin/{name}")  # the HF API calls a malformed id missing
            refused(hf, hf.status_code if hf.status_code in (404, 422) else 422, "invalid_input", "adapter_not_found")
        for name in ("bad\n", "bad\x00", "a" * 300, "B\u00e4d"):
            refused(http.post("/api/repos/create", json={"name": name}), 422, "invalid_name", "invalid_input")
        refused(http.post("/api/repos/create", json={"name": ["x"], "organization": {"a": 1}}), 422, "invalid_name")
        for tag in ("v1%0A", "v%001", "v" * 65, "%0D%0Ax"):
            refused(http.put(f"/api/adapters/admin/ok/tags/{tag}", json={"revision": "main"}), 422, "invalid_input")
        for tags in (["v1\n"], ["v\x00"], ["t" * 300], [["v1"]]):
            r = http.post("/api/adapters/admin/ok/commit", json={"files": _spec(good), "tags": tags})
            refused(r, 422, "invalid_input")
        for path in ("notes.txt\n", "no\x00tes.txt", "n\r\nX-Evil: 1.txt", "x" * 300 + ".txt"):
            spec = _spec(good) + [{"path": path, "sha256": "0" * 64, "size": 1}]
            codes = ("invalid_input", "invalid_adapter")
            refused(http.post("/api/adapters/admin/ok/commit", json={"files": spec}), 422, *codes)
            refused(http.post("/api/adapters/admin/ok/preupload", json={"files": spec}), 422, *codes)
            line = {"key": "file", "value": {"path": path, "content": base64.b64encode(b"x\n").decode()}}
            header = {"key": "header", "value": {"summary": "s"}}
            r = http.post("/api/models/admin/ok/commit/main", content=_ndjson(header, line))
            refused(r, 422, "invalid_input", "invalid_adapter")
        for query in ("revision=main%0A", "revision=ma%00in", "q=%00", "revision=" + "x" * 40 + "%0A"):
            refused(http.get(f"/api/adapters/admin/ok?{query}"), 422, "invalid_input")
        refused(http.get("/api/adapters?q=a%00b"), 422, "invalid_input")
        refused(http.get("/admin/ok/resolve/main/adapter_config.json%00"), 422, "invalid_input")
        message = http.post("/api/adapters/admin/ok/evals",
                            json={"evals": [{"metric": "acc\r\nX-Evil: 1", "value": 1, "dataset": "d"}]})
        refused(message, 422, "invalid_input")
    assert state(hub) == before


def test_out_of_range_numbers_are_422_on_every_backend(hub):
    good = _lora()
    _native_push(hub, "admin/nums", good)[0].raise_for_status()
    before = state(hub)
    evals = "/api/adapters/admin/nums/evals"
    bodies = [
        ("/api/admin/gc", {"grace_seconds": 10**30}), ("/api/admin/gc", {"grace_seconds": -1}),
        ("/api/admin/gc", {"grace_seconds": True}), ("/api/admin/gc", {"dry_run": "yes"}),
        ("/api/adapters/admin/nums/commit", {"files": [{**_spec(good)[0], "size": -1}]}),
        ("/api/adapters/admin/nums/commit", {"files": [{**_spec(good)[0], "size": 2**70}]}),
        ("/api/adapters/admin/nums/commit", {"files": [{**_spec(good)[0], "size": "12"}]}),
        ("/api/adapters/admin/nums/commit", {"files": _spec(good), "private": "no"}),
        ("/api/adapters/admin/nums/commit", {"files": _spec(good), "message": "m\x00"}),
        ("/api/adapters/admin/nums/preupload", {"files": [{**_spec(good)[0], "size": 10**40}]}),
        (evals, {"evals": [{"metric": "acc", "value": 10**400, "dataset": "d"}]}),
        (evals, {"evals": [{"metric": "acc", "value": True, "dataset": "d"}]}),
        (evals, {"evals": [{"metric": "acc", "value": 1, "dataset": "d" * 300}]}),
        (evals, {"evals": [{"metric": "acc", "value": 1, "dataset": "d", "extra": {"k": "\x00"}}]}),
        (evals, {"evals": [{"metric": "acc", "value": 1, "dataset": "d", "extra": {"k": "x" * 20_000}}]}),
        (evals, {"evals": [{"metric": "a\x00cc", "value": 1, "dataset": "d"}]}),
        (evals, {"revision": "ma\x00in", "evals": [{"metric": "acc", "value": 1, "dataset": "d"}]}),
    ]
    with httpx.Client(base_url=hub.url, headers=_auth(hub), timeout=30) as http:
        for path, body in bodies:
            refused(http.post(path, json=body), 422, "invalid_input")
        for raw in (b'{"evals": [{"metric": "acc", "value": NaN, "dataset": "d"}]}',
                    b'{"evals": [{"metric": "acc", "value": Infinity, "dataset": "d"}]}',
                    b'{"evals": [{"metric": "acc", "value": 1, "dataset": "d", "extra": {"x": NaN}}]}'):
            refused(http.post(evals, content=raw, headers={"Content-Type": "application/json"}), 422, "invalid_input")
        refused(http.put("/api/adapters/admin/nums/tags/v2", json={"revision": "m\x00"}), 422, "invalid_input")
        for query in ("page=" + "9" * 30, "per_page=" + "9" * 30, "min_rank=" + "9" * 30, "page=-1"):
            refused(http.get(f"/api/adapters?{query}"), 422, "invalid_input")
        refused(http.put(f"/api/blobs/{'0' * 64}?size=" + "9" * 30, content=b""), 422,
                "invalid_input", "checksum_mismatch")
        assert http.post("/api/admin/gc", json={"grace_seconds": 10 * 365 * 86400, "dry_run": True}).status_code == 200
    assert state(hub) == before


# --- 5. body size caps -----------------------------------------------------------------


def _raw_exchange(
    url: str, head: bytes, body_parts: list[bytes], timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """Send a request's head and some body bytes on a bare socket (never
    finishing the body) and read the response that comes back anyway."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "the hub closed the connection without an answer"
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk
            rest += chunk
    return int(lines[0].split()[1]), headers, rest


def _head(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def test_bodies_over_the_cap_are_413_before_they_are_read(hub, monkeypatch):
    from peft_hub.hub import limits

    host = urlsplit(hub.url).netloc
    before = state(hub)
    # Declared too large: answered at once, with only the head sent (and no token).
    for method, path, declared in (("POST", "/api/adapters/admin/x/commit", 2 * MiB), ("POST", "/api/tokens", 10**12),
                                   ("PUT", f"/api/blobs/{'0' * 64}?size=1", 9 * 1024**3),
                                   ("POST", "/login", MiB)):
        start = time.perf_counter()
        status, headers, body = _raw_exchange(hub.url, _head(method, path, host, {"Content-Length": str(declared)}), [])
        assert status == 413 and json.loads(body)["error"] == "payload_too_large", body
        assert headers["x-error-code"] == "payload_too_large" and time.perf_counter() - start < 10
    # Chunked, no length: refused once the count passes the cap, though the body never ends.
    chunk = b"x" * 65536
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    head = _head("POST", "/api/adapters/admin/x/commit", host,
                 {"Transfer-Encoding": "chunked", "Content-Type": "application/json"})
    status, _, body = _raw_exchange(hub.url, head, [framed] * 20)  # 1.25 MiB of a body that never ends
    assert status == 413 and json.loads(body)["error"] == "payload_too_large"
    # An upload route counts as the route streams; a smaller cap makes that testable.
    cap = 256 * 1024
    monkeypatch.setattr(limits, "BODY_CAPS", [(m, p, cap if s else c, s) for m, p, c, s in limits.BODY_CAPS])
    data = b"y" * (cap + 65536)
    sha = hashlib.sha256(data).hexdigest()
    head = _head("PUT", f"/api/blobs/{sha}?size={len(data)}", host,
                 {"Transfer-Encoding": "chunked", "Authorization": f"Bearer {hub.admin_token}"})
    status, _, body = _raw_exchange(hub.url, head, [b"%x\r\n%s\r\n" % (len(data), data)])
    assert status == 413 and json.loads(body)["error"] == "payload_too_large", body
    monkeypatch.undo()
    # An ordinary client sending too much gets the answer, not a reset.
    with httpx.Client(base_url=hub.url, timeout=30) as http:
        refused(http.post("/api/adapters/admin/x/commit", content=b"[" + b"1," * MiB + b"1]"), 413, "payload_too_large")

        def stream():
            for _ in range(40):
                yield chunk

        refused(http.post("/api/adapters/admin/x/preupload", content=stream()), 413, "payload_too_large")
        assert http.get("/api/health").status_code == 200  # the same connection still works
    assert state(hub) == before


# --- 6. model cards cost little to render ---------------------------------------------------


PATHOLOGICAL_MARKDOWN = {
    "quotes": ">" * DEEP, "spaced quotes": "> " * DEEP, "brackets": "[" * DEEP, "stars": "*" * DEEP,
    "emphasis": "*a " * DEEP, "underscores": "_" * DEEP, "balanced brackets": "[" * DEEP + "]" * DEEP,
    "star brackets": "*[" * (DEEP // 2), "image brackets": "![" * (DEEP // 2), "ordered list": "1. a\n" * DEEP,
    "bullets": "- " * DEEP, "table": "|a|\n|-|\n" + "|a|\n" * DEEP, "entities": "&amp;" * DEEP, "angles": "<" * DEEP,
    "backticks": "`" * DEEP, "setext": "a\n=\n" * DEEP, "spaces": " " * (4 * DEEP), "NULs": "\x00" * DEEP,
}


@pytest.mark.parametrize("case", list(PATHOLOGICAL_MARKDOWN))
def test_pathological_markdown_renders_fast(case):
    from peft_hub.hub.web.card import render_card

    text = PATHOLOGICAL_MARKDOWN[case]
    start = time.perf_counter()
    html = render_card(text[: 1024 * 1024])
    assert time.perf_counter() - start < 5  # a hang guard: about 0.2 s at worst on an idle core
    assert len(html) < 12 * len(text) + 1000 and "<script" not in html
    assert render_card(text[: 1024 * 1024]) is html  # rendered once, kept by sha256


def test_a_big_card_keeps_its_markdown_up_to_the_budget():
    from peft_hub.hub.web.card import render_card

    html = render_card("# Title\n\n" + "Some *text* here.\n\n" * 20_000 + "<script>alert(1)</script>")
    assert "<h3>Title</h3>" in html and "<em>text</em>" in html and "shown as plain text" in html
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_card_metadata_is_bounded_in_the_hf_api(hub):
    # A card pushed before the push-time check existed: cardData must stay small.
    from peft_hub.hub.hf import shapes
    from peft_hub.hub.models import RevisionFile

    card = f"---\n{BILLION_LAUGHS}\n---\n# Card\n".encode()
    sha = hashlib.sha256(card).hexdigest()
    hub.app.state.store.put(sha, len(card), [card])
    entry = RevisionFile(revision_id=1, path="README.md", sha256=sha, size=len(card))
    start = time.perf_counter()
    assert shapes.card_metadata(hub.app.state.store, [entry]) == {}
    assert time.perf_counter() - start < 5


# --- 7. no docs pages that load scripts from elsewhere ---------------------------------------


def test_docs_pages_are_gone_and_the_schema_stays(embedded_hub):
    with httpx.Client(base_url=embedded_hub.url, timeout=30) as http:
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            r = http.get(path)
            assert r.status_code == 404 and "swagger-ui" not in r.text and "redoc.standalone" not in r.text
            assert "cdn.jsdelivr" not in r.text
        assert http.get("/openapi.json").json()["info"]["title"] == "peft-hub"
        refused(http.delete("/api/health"), 405, "method_not_allowed")
        refused(http.get("/api/nope/at/all/here"), 404, "not_found")
