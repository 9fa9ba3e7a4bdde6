"""examples/convex/lib/escaping.ts undoes relay.convex_values' escaping exactly (under Node)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from relay.normalize import convex_safe, escape_key

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "convex"
TYPESCRIPT = EXAMPLE / "node_modules" / "typescript"

TRICKY_KEYS = [
    "plain",
    "first_name",
    "",
    "~",
    "~~",
    "~7E",
    "~u0041",
    "a~",
    "$set",
    "_id",
    "__proto__",
    "constructor",
    "a$_b",
    "café",
    "日本語",
    "😀 emoji",
    "\x00\x1f\x7f",
    "\ud800",
    "\udfff x",
    "\U0010ffff",
    "k" * 1000,
]

# Transpiles the real escaping.ts with the example's own TypeScript, then checks, in JS,
# that unescapeKey undoes every Python-escaped key and unescapeKeys undoes convex_safe.
RUNNER = """
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
const [source, typescriptDir, outFile, casesFile] = process.argv.slice(2);
const ts = createRequire(import.meta.url)(typescriptDir);
const js = ts.transpileModule(readFileSync(source, "utf8"), {
  compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
}).outputText;
writeFileSync(outFile, js);
const { unescapeKey, unescapeKeys } = await import(pathToFileURL(outFile).href);
const cases = JSON.parse(readFileSync(casesFile, "utf8"));
const failures = cases.keys
  .filter(([escaped, original]) => unescapeKey(escaped) !== original)
  .map(([escaped, original]) => ({ escaped, original, got: unescapeKey(escaped) }));
const value = unescapeKeys(cases.value);
const protoKept =
  Object.getPrototypeOf(value.nested[0]) === Object.prototype &&
  Object.keys(value.nested[0]).includes("__proto__");
const same = JSON.stringify(value) === JSON.stringify(cases.original);
console.log(JSON.stringify({ failures, same, protoKept }));
"""


def run_node(tmp_path: Path, cases: dict[str, Any]) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not TYPESCRIPT.exists():
        if os.environ.get("CI"):
            pytest.fail("CI needs node and examples/convex/node_modules (npm ci there)")
        pytest.skip("node or examples/convex/node_modules/typescript not installed")
    runner = tmp_path / "runner.mjs"
    runner.write_text(RUNNER)
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(cases))
    result = subprocess.run(
        [
            node,
            str(runner),
            str(EXAMPLE / "lib" / "escaping.ts"),
            str(TYPESCRIPT),
            str(tmp_path / "escaping.mjs"),
            str(cases_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_typescript_inverse_agrees_with_python(tmp_path: Path) -> None:
    """unescapeKey/unescapeKeys in escaping.ts restore what Python's escaping produced."""
    original = {
        "$meta": {"_id": 1, "": [{"café": None}], "~": "tilde"},
        "nested": [{"__proto__": {"x": 1}, "日本": True}],
    }
    out = run_node(
        tmp_path,
        {
            "keys": [[escape_key(k), k] for k in TRICKY_KEYS],
            "value": convex_safe(original),
            "original": original,
        },
    )
    assert out["failures"] == []
    assert out["same"] is True
    assert out["protoKept"] is True
