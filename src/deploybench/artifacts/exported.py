"""torch.export programs (`model.pt2`) loaded without running code from the file.

`torch.export.load` trusts its file: it unpickles tensor-subclass weights and constants with torch's full
(code-running) unpickler, falls back to that unpickler for sample inputs that fail the safe one, unpickles
opaque constants with `pickle.loads` and TorchBind objects with TorchScript's unpickler,
loads AOTInductor shared libraries, parses symbolic shapes with `sympy.sympify` (which calls `eval`), resolves node
targets by walking attributes of `torch`, `operator` and `math`, and `ExportedProgram.module()` calls `exec` on the
program's guards code. `load_program` reads an archive only when each of these is plain data (allow-lists of
names and tokens), and runs `torch.export.load` with every `torch.load` forced to `weights_only=True` (torchao
registers its tensor subclasses with the safe unpickler, so quantized weights still load).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tokenize
import zipfile
from typing import Iterator

import torch

from deploybench.errors import UserError

# Operator namespaces a program of ours calls (aten, prims, PT2E's and torchao's quantize ops, export's helpers).
OP_NAMESPACES = {"aten", "prims", "quantized_decomposed", "quantized", "torchao", "export", "higher_order", "onednn"}
_PART = r"(?!__)[A-Za-z_][A-Za-z0-9_]*"  # no dunder: attribute walks stop at the operator
_OP_TARGET = re.compile(rf"torch\.ops\.({_PART})\.{_PART}(\.{_PART})?")
# the operator module's arithmetic and comparisons only: attrgetter, methodcaller and call reach any attribute
_OPERATOR_TARGETS = {
    f"_operator.{name}"
    for name in (
        "getitem",
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "neg",
        "pos",
        "abs",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and_",
        "or_",
        "xor",
        "not_",
        "invert",
        "lshift",
        "rshift",
    )
}
_MATH_TARGET = re.compile(r"math\.[a-z][a-z0-9_]*")
# Names a symbolic-shape expression may hold: sympy's constructors and assumptions, and the functions the
# deserializer passes to sympify. Anything else (a builtin such as eval, open or chr) could run code in its eval.
_SYMPY_NAMES = {
    "Symbol",
    "Integer",
    "Rational",
    "Float",
    "Max",
    "Min",
    "Abs",
    "Mod",
    "floor",
    "ceiling",
    "sqrt",
    "Pow",
    "Mul",
    "Add",
    "Eq",
    "Ne",
    "Lt",
    "Le",
    "Gt",
    "Ge",
    "And",
    "Or",
    "Not",
    "Piecewise",
    "oo",
    "zoo",
    "nan",
    "true",
    "false",
    "True",
    "False",
    "None",
    "positive",
    "negative",
    "nonnegative",
    "nonpositive",
    "integer",
    "real",
    "finite",
    "zero",
    "FloorDiv",
    "ModularIndexing",
    "Where",
    "PythonMod",
    "CleanDiv",
    "CeilToInt",
    "FloorToInt",
    "CeilDiv",
    "LShift",
    "RShift",
    "PowByNatural",
    "FloatPow",
    "FloatTrueDiv",
    "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat",
    "TruncToInt",
    "RoundToInt",
    "RoundDecimal",
    "ToFloat",
    "Identity",
}
_SYMBOL = re.compile(r"[a-z]+[0-9]+")  # s0, u3, s31: the names torch gives shape symbols
_SYMBOL_STRING = re.compile(r"""(['"])[a-z]+[0-9]+\1""")
_EXPR_OPS = {"(", ")", ",", "+", "-", "*", "/", "%", "**", "//", "=", "==", "!=", "<", "<=", ">", ">="}
_PLAIN_TOKENS = {tokenize.NUMBER, tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER}
# Guards code compares input sizes (`L['x'].size()[0] <= 64`); it is exec'd inside `torch._assert(GUARD, "...")`,
# so it holds no newline, double quote or backslash, which could close that call or its message.
_GUARD_NAMES = {
    "L",
    "size",
    "stride",
    "storage_offset",
    "math",
    "floor",
    "ceil",
    "trunc",
    "sqrt",
    "inf",
    "max",
    "min",
    "abs",
    "int",
    "float",
    "Max",
    "Min",
    "Abs",
    "Mod",
    "FloorDiv",
    "CeilDiv",
    "PythonMod",
    "True",
    "False",
    "None",
    "and",
    "or",
    "not",
}
_GUARD_OPS = _EXPR_OPS - {"="} | {"[", "]", "."}
_NAME_STRING = re.compile(r"'[A-Za-z_][A-Za-z0-9_]*'")


def _expr_problem(expr) -> str | None:
    """Why a symbolic-shape expression is not plain arithmetic on shape symbols (None when it is)."""
    if not isinstance(expr, str):
        return "is not text"
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return "does not parse"
    for tok in tokens:
        if tok.type in _PLAIN_TOKENS:
            continue
        if tok.type == tokenize.NAME and (tok.string in _SYMPY_NAMES or _SYMBOL.fullmatch(tok.string)):
            continue
        if tok.type == tokenize.OP and tok.string in _EXPR_OPS:
            continue
        if tok.type == tokenize.STRING and _SYMBOL_STRING.fullmatch(tok.string):
            continue
        return f"holds {tok.string[:40]!r}"
    return None


def _guard_problem(guard) -> str | None:
    """Why a line of guards code is not a comparison of input sizes (None when it is)."""
    if not isinstance(guard, str):
        return "is not text"
    if any(c in guard for c in '\n\r"\\'):
        return "holds a newline, a double quote or a backslash"
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(guard).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return "does not parse"
    for tok in tokens:
        if (
            tok.type in _PLAIN_TOKENS
            or (tok.type == tokenize.NAME and tok.string in _GUARD_NAMES)
            or (tok.type == tokenize.OP and tok.string in _GUARD_OPS)
            or (tok.type == tokenize.STRING and _NAME_STRING.fullmatch(tok.string))
        ):
            continue
        return f"holds {tok.string[:40]!r}"
    return None


def _target_problem(target) -> str | None:
    """Why a graph node's target is not an operator a program of ours may call (None when it is)."""
    if not isinstance(target, str):
        return None  # not a serialized callable (other fields are also named target)
    op = _OP_TARGET.fullmatch(target)
    if op and op.group(1) in OP_NAMESPACES:
        return None
    if target in _OPERATOR_TARGETS or _MATH_TARGET.fullmatch(target):
        return None
    return f"calls {target[:80]!r}, which is not an operator of {', '.join(sorted(OP_NAMESPACES))}"


def _walk(obj) -> Iterator[tuple[str, object]]:
    """Every (key, value) pair anywhere in a parsed JSON document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def _json_problem(doc) -> str | None:
    """The first thing in a program's JSON that torch would turn into code: guards code, a symbolic expression
    that is not arithmetic, a node target that is not an allowed operator, a constant that is no tensor."""
    for key, value in _walk(doc):
        if key == "guards_code":
            guards = value if isinstance(value, list) else [value]
            if why := next(filter(None, map(_guard_problem, guards)), None):
                return f"its guards code, which ExportedProgram.module() execs, {why}"
        if key == "expr_str" and (why := _expr_problem(value)):
            return f"a symbolic shape {why}"
        if key == "target" and (why := _target_problem(value)):
            return f"a graph node {why}"
        if key == "path_name" and isinstance(value, str) and value.startswith(("custom_obj_", "opaque_obj_")):
            return f"constant {value[:60]!r} is a pickled object, not a tensor"
    return None


def _archive_problem(archive: zipfile.ZipFile) -> str | None:
    """Why an archive is not a plain-data torch.export program (None when it is)."""
    names = archive.namelist()
    if len(names) != len(set(names)):
        return "it names one entry twice"  # zip readers disagree on which copy they read
    if not any(n.endswith("/models/model.json") or n == "models/model.json" for n in names):
        return "it is not a torch.export archive of this torch version (no models/model.json)"
    for name in names:
        if "/data/aotinductor/" in f"/{name}" or "/data/executorch/" in f"/{name}" or "/data/mtia" in f"/{name}":
            return f"it holds compiled code ({name[:80]})"
        if name.endswith(".json"):
            try:
                why = _json_problem(json.loads(archive.read(name)))
            except (ValueError, UnicodeDecodeError, RecursionError):
                return f"{name[:80]} is not JSON (or nests too deep to check)"
            if why:
                return why
    return None


def check_program(data: bytes, where: str) -> None:
    """Refuse a `.pt2` archive in which anything would run as code when torch.export loads it. Args: the
    archive's bytes; what to call it in the error."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            why = _archive_problem(archive)
    except (zipfile.BadZipFile, ValueError, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
        why = f"it is not a readable zip archive ({str(exc)[:120]})"
    if why:
        raise UserError(f"{where} refused: {why}")


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every torch.load in this block uses the safe unpickler, whatever weights_only its caller passes."""
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def load_program(data: bytes, where: str) -> torch.export.ExportedProgram:
    """A torch.export program from its archive's bytes, checked by `check_program` and unpickled with the safe
    unpickler only. Args: the bytes; what to call them in errors. Returns the ExportedProgram."""
    check_program(data, where)
    try:
        with _weights_only_loads():
            return torch.export.load(io.BytesIO(data))
    except Exception as exc:  # torch raises many types for a bad archive; the first line says which
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
        raise UserError(
            f"{where} refused: it does not load as plain data ({type(exc).__name__}: {why[:160]})"
        ) from None
