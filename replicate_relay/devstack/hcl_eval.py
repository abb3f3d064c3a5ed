"""Evaluate Terraform's HCL expressions offline, from python-hcl2's Lark parse tree.

Why the Lark tree: python-hcl2 (8.x) exposes `hcl2.parses_to_tree`, the raw parse tree of its
grammar (hcl2.lark), with every expression already parsed into nodes (`conditional`,
`binary_op`, `for_object_expr`, `function_call`, `get_attr_expr_term`, ...) and line numbers.
Its dict output (`hcl2.load`) turns the same expressions back into strings such as
"${merge(...)}", which would have to be parsed again by hand. So this module walks the tree.

What it covers: literals, string templates with interpolation (not `%{}` directives or
heredocs), tuples and objects, attribute access, indexing, splats, for-expressions (with `if`
and `...` grouping), conditionals (only the branch chosen is evaluated), unary and binary
operators (`&&`/`||` short-circuit), and the functions of `make_functions`; any other function
is an error naming it. Values are plain Python: str, int/float, bool, None, list, dict, and
TfSet (a set, kept sorted as Terraform iterates it). Maps and objects are iterated in key
order, as Terraform does.

Errors: TerraformEvalError. Its subclass DynamicError is an error of a value (a missing
attribute or key, an index out of range, a failing function), the only kind try() and can()
catch, as in Terraform; a reference to something undeclared is never hidden by them.
`references(expr)` lists what an expression refers to, in every branch, so that the caller can
check declarations the way `terraform validate` does.

What a name refers to (var., local., resources) is not decided here: the evaluator asks its
`root` callback, which may answer with a Lazy object (terraform_env.py's namespaces and
resources) that is resolved only when an attribute or index of it is taken.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from replicate_relay.devstack.processes import StackError

if TYPE_CHECKING:
    from lark import Token, Tree

    Node = Tree[Token]

Scope = Mapping[str, object]


class TerraformEvalError(StackError):
    """An expression cannot be evaluated; the message names the file, line and what failed."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line  # of the failing expression, until `within` places it in a file
        self.placed = False

    def within(self, what: str, file: str) -> TerraformEvalError:
        """This error as raised while evaluating `what` (defined in `file`); try() no longer catches it."""
        message = self.message if self.placed or self.line is None else f"{file}:{self.line}: {self.message}"
        placed = TerraformEvalError(f"{message}\n  in {what}")
        placed.placed = True
        return placed


def located(file: str, line: int, message: str) -> TerraformEvalError:
    """An error already placed at file:line, so that no enclosing expression claims it."""
    error = TerraformEvalError(f"{file}:{line}: {message}")
    error.placed = True
    return error


class DynamicError(TerraformEvalError):
    """A value's error (missing attribute or key, bad index, failing function): try() and can() catch it."""


class TfSet(tuple[object, ...]):
    """A Terraform set: unique elements in Terraform's iteration order (strings lexically)."""

    @classmethod
    def of(cls, items: Iterable[object]) -> TfSet:
        unique: dict[str, object] = {json.dumps(item, sort_keys=True, default=str): item for item in items}
        return cls(sorted(unique.values(), key=_set_order))


def _set_order(item: object) -> tuple[int, str | float]:
    if isinstance(item, str):
        return 0, item
    if isinstance(item, int | float) and not isinstance(item, bool):
        return 1, item
    return 2, json.dumps(item, sort_keys=True, default=str)


class Lazy:
    """A value resolved on demand: the evaluator asks it for an attribute, an index, or its whole value."""

    description = "this value"

    def attr(self, name: str) -> object:
        raise TerraformEvalError(f"{self.description} has no attribute {name!r}")

    def index(self, key: object) -> object:
        raise TerraformEvalError(f"{self.description} cannot be indexed")

    def value(self) -> object:
        raise TerraformEvalError(f"{self.description} cannot be used as a whole value")


@dataclass(frozen=True)
class Attribute:
    name: str
    expr: Node
    file: str
    line: int


@dataclass(frozen=True)
class Block:
    type: str
    labels: tuple[str, ...]
    attributes: Mapping[str, Attribute]
    blocks: tuple[Block, ...]
    file: str
    line: int

    def blocks_of(self, type_: str) -> list[Block]:
        return [block for block in self.blocks if block.type == type_]


def load_blocks(directory: Path) -> list[Block]:
    """The top-level blocks of every *.tf file in `directory`, files in name order."""
    blocks: list[Block] = []
    for path in sorted(directory.glob("*.tf")):
        tree = _parse(path.read_text(encoding="utf-8"), path.name)
        blocks.extend(_body(_trees(tree)[0], path.name)[1])
    return blocks


@functools.lru_cache(maxsize=64)
def _parse(text: str, file: str) -> Node:
    import hcl2  # noqa: PLC0415 - dev-only dependency, needed only when Terraform is read
    from lark.exceptions import LarkError  # noqa: PLC0415

    try:
        tree: Node = hcl2.parses_to_tree(text)
    except LarkError as error:
        raise TerraformEvalError(f"{file}: cannot parse: {error}") from None
    return tree


def _body(body: Node, file: str) -> tuple[dict[str, Attribute], list[Block]]:
    attributes: dict[str, Attribute] = {}
    blocks: list[Block] = []
    for child in _trees(body):
        if child.data == "attribute":
            name = _name(child.children[0])
            if name in attributes:
                raise TerraformEvalError(f"{file}:{child.meta.line}: argument {name!r} is set twice")
            attributes[name] = Attribute(name, _trees(child)[-1], file, child.meta.line)
        elif child.data == "block":
            parts = _trees(child)
            labels = tuple(_name(part) if part.data != "string" else _literal(part) for part in parts[1:-1])
            inner_attributes, inner_blocks = _body(parts[-1], file)
            blocks.append(Block(_name(parts[0]), labels, inner_attributes, tuple(inner_blocks), file, child.meta.line))
    return attributes, blocks


def _trees(node: Node) -> list[Node]:
    """The child nodes that are rules, without tokens, newlines or comments."""
    return [c for c in node.children if not isinstance(c, str) and c.data != "new_line_or_comment"]


def _tokens(node: Node) -> list[Token]:
    return [c for c in node.children if isinstance(c, str)]


def _name(node: Node | Token) -> str:
    """The name held by an identifier, keyword or literal_value node."""
    return str(node) if isinstance(node, str) else str(node.children[0])


def _literal(string: Node) -> str:
    parts = [part.children[0] for part in _trees(string)]
    tokens = [part for part in parts if isinstance(part, str)]
    if len(tokens) != len(parts):
        raise TerraformEvalError(f"line {string.meta.line}: a block label must be a literal string")
    return "".join(_unescape(token) for token in tokens)


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def _unescape(token: Token) -> str:
    if token.type == "ESCAPED_INTERPOLATION":
        return token[1:]  # $${x} is the text ${x}
    if token.type == "ESCAPED_DIRECTIVE":
        return token[1:]

    def one(match: re.Match[str]) -> str:
        escape = match.group(1)
        return _ESCAPES[escape] if escape in _ESCAPES else chr(int(escape[1:], 16))

    return re.sub(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", one, str(token))


def plain(value: object) -> object:
    """`value` itself, or a Lazy one's whole value."""
    return value.value() if isinstance(value, Lazy) else value


def to_string(value: object) -> str:
    """Terraform's conversion of a primitive to string: bools as true/false, numbers in decimal."""
    value = plain(value)
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    raise DynamicError(f"{describe(value)} is not a string, number or bool")


def describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, Lazy):
        return value.description
    kinds = ((dict, "an object"), (TfSet, "a set"), (list, "a list"), (str, "the string"))
    kind = next((name for type_, name in kinds if isinstance(value, type_)), "the value")
    text = json.dumps(value, default=str)
    return f"{kind} {text if len(text) < 80 else text[:77] + '...'}"


def items(collection: object) -> list[tuple[object, object]]:
    """(key, value) pairs as Terraform iterates them: maps by key, lists by index, sets value = key."""
    collection = plain(collection)
    if isinstance(collection, dict):
        return sorted(collection.items())
    if isinstance(collection, TfSet):
        return [(item, item) for item in collection]
    if isinstance(collection, list | tuple):
        return list(enumerate(collection))
    raise DynamicError(f"cannot iterate over {describe(collection)}")


def get_attr(base: object, name: str) -> object:
    if isinstance(base, Lazy):
        return base.attr(name)
    if isinstance(base, dict):
        if name in base:
            return base[name]
        raise DynamicError(f"no attribute {name!r} (it has {', '.join(sorted(base)) or 'none'})")
    raise DynamicError(f"cannot take attribute {name!r} of {describe(base)}")


def get_index(base: object, key: object) -> object:
    if isinstance(base, Lazy):
        return base.index(key)
    if isinstance(base, dict):
        text = to_string(key)
        if text in base:
            return base[text]
        raise DynamicError(f"no key {text!r} (it has {', '.join(sorted(base)) or 'none'})")
    if isinstance(base, list | tuple) and not isinstance(base, TfSet):
        position = _number(key)
        if isinstance(position, int) and 0 <= position < len(base):
            return base[position]
        raise DynamicError(f"index {key!r} out of range of a list of {len(base)}")
    raise DynamicError(f"cannot index {describe(base)} with {key!r}")


def _number(value: object) -> int | float:
    value = plain(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            return int(number) if number.is_integer() and "." not in value else number
    raise DynamicError(f"{describe(value)} is not a number")


def _bool(value: object) -> bool:
    value = plain(value)
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise DynamicError(f"{describe(value)} is not a bool")


def equal(a: object, b: object) -> bool:
    a, b = plain(a), plain(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    numbers = isinstance(a, int | float) and isinstance(b, int | float)
    return (numbers or type(a) is type(b)) and a == b


def _arith(op: str, a: int | float, b: int | float) -> int | float:
    if op in "/%" and b == 0:
        raise DynamicError(f"division by zero ({a} {op} {b})")
    if op == "+":
        result = a + b
    elif op == "-":
        result = a - b
    elif op == "*":
        result = a * b
    elif op == "/":
        result = a / b
    else:
        result = math.fmod(a, b)  # the sign of the dividend, as in Terraform (Go)
    return int(result) if isinstance(result, float) and result.is_integer() else result


class Evaluator:
    """Evaluates expression nodes; names not bound in the scope go to `root` (var, local, resources...)."""

    def __init__(self, root: Callable[[str], object], functions: Mapping[str, Callable[..., object]]) -> None:
        self._root = root
        self._functions = functions

    def evaluate(self, node: Node, scope: Scope) -> object:
        try:
            method = getattr(self, f"_eval_{node.data}")
        except AttributeError:
            raise TerraformEvalError(f"unsupported expression ({node.data})", line=node.meta.line) from None
        try:
            result: object = method(node, scope)
        except TerraformEvalError as error:
            if error.line is None and not error.placed:
                error.line = node.meta.line
            raise
        return result

    def _eval_expr_term(self, node: Node, scope: Scope) -> object:
        return self.evaluate(_trees(node)[0], scope)

    def _eval_int_lit(self, node: Node, scope: Scope) -> object:
        return int(_tokens(node)[0])

    def _eval_float_lit(self, node: Node, scope: Scope) -> object:
        return float(_tokens(node)[0])

    def _eval_literal_value(self, node: Node, scope: Scope) -> object:
        return {"true": True, "false": False, "null": None}[_name(node)]

    def _eval_identifier(self, node: Node, scope: Scope) -> object:
        name = _name(node)
        return scope[name] if name in scope else self._root(name)

    def _eval_string(self, node: Node, scope: Scope) -> object:
        parts = [part.children[0] for part in _trees(node)]
        if len(parts) == 1 and not isinstance(parts[0], str) and parts[0].data == "interpolation":
            return self.evaluate(_trees(parts[0])[0], scope)  # "${x}" alone keeps x's type
        text = []
        for part in parts:
            if isinstance(part, str):
                text.append(_unescape(part))
            elif part.data == "interpolation":
                value = plain(self.evaluate(_trees(part)[0], scope))
                if value is None:
                    raise DynamicError("null interpolated into a string", line=part.meta.line)
                text.append(to_string(value))
            else:
                raise TerraformEvalError("template directives (%{...}) are not supported", line=part.meta.line)
        return "".join(text)

    def _eval_tuple(self, node: Node, scope: Scope) -> object:
        return [self.evaluate(element, scope) for element in _trees(node)]

    def _eval_object(self, node: Node, scope: Scope) -> object:
        result: dict[str, object] = {}
        for element in _trees(node):
            key_node, value_node = _trees(element)
            key_expr = _trees(key_node)[0]
            if _is_bare_name(key_expr):  # `name = ...` is the key "name"; `(name)` or "${...}" is evaluated
                key = _name(_trees(key_expr)[0] if key_expr.data == "expr_term" else key_expr)
            else:
                key = to_string(self.evaluate(key_expr, scope))
            if key in result:
                raise TerraformEvalError(f"duplicate object key {key!r}", line=element.meta.line)
            result[key] = self.evaluate(value_node, scope)
        return result

    def _eval_function_call(self, node: Node, scope: Scope) -> object:
        name_node, *rest = _trees(node)
        name = "::".join(_name(n) for n in [name_node, *rest] if n.data == "identifier")
        arguments = _trees(rest[-1]) if rest and rest[-1].data == "arguments" else []
        expand = bool(rest) and rest[-1].data == "arguments" and "..." in _tokens(rest[-1])
        if name in ("try", "can"):
            return self._try(name, arguments, scope)
        function = self._functions.get(name)
        if function is None:
            raise TerraformEvalError(f"unknown function {name}()")
        values = [plain(self.evaluate(argument, scope)) for argument in arguments]
        if expand:
            values[-1:] = [plain(v) for v in values[-1]] if isinstance(values[-1], list | tuple) else [values[-1]]
        try:
            return function(*values)
        except TypeError as error:
            raise DynamicError(f"{name}(): {error}") from None
        except DynamicError as error:
            raise DynamicError(f"{name}(): {error.message}") from None

    def _try(self, name: str, arguments: list[Node], scope: Scope) -> object:
        for argument in arguments:
            try:
                value = plain(self.evaluate(argument, scope))
            except DynamicError:
                if name == "can":
                    return False
                continue
            return True if name == "can" else value
        raise DynamicError("no argument of try() could be evaluated")

    def _eval_get_attr_expr_term(self, node: Node, scope: Scope) -> object:
        base, accessor = _trees(node)
        return self._access(self.evaluate(base, scope), accessor, scope)

    _eval_index_expr_term = _eval_get_attr_expr_term

    def _access(self, base: object, accessor: Node, scope: Scope) -> object:
        if accessor.data == "get_attr":
            return get_attr(base, _name(_trees(accessor)[0]))
        if accessor.data == "short_index":
            return get_index(base, int(_tokens(accessor)[-1]))
        return get_index(base, self.evaluate(_trees(accessor)[0], scope))

    def _eval_attr_splat_expr_term(self, node: Node, scope: Scope) -> object:
        base_node, splat = _trees(node)
        base = plain(self.evaluate(base_node, scope))
        elements = [] if base is None else list(base) if isinstance(base, list | tuple) else [base]
        return [self._access_all(element, _trees(splat), scope) for element in elements]

    def _access_all(self, value: object, accessors: list[Node], scope: Scope) -> object:
        for accessor in accessors:
            value = self._access(value, accessor, scope)
        return value

    _eval_full_splat_expr_term = _eval_attr_splat_expr_term

    def _for(self, node: Node, scope: Scope) -> tuple[list[Scope], list[Node]]:
        """The scopes of the elements the `if` keeps, and the for-expression's result nodes."""
        intro, *body = _trees(node)
        *names, collection = _trees(intro)
        condition = _trees(body.pop())[0] if body[-1].data == "for_cond" else None
        scopes: list[Scope] = []
        for key, value in items(self.evaluate(collection, scope)):
            bound = {_name(names[0]): value} if len(names) == 1 else {_name(names[0]): key, _name(names[1]): value}
            inner = {**scope, **bound}
            if condition is None or _bool(self.evaluate(condition, inner)):
                scopes.append(inner)
        return scopes, body

    def _eval_for_tuple_expr(self, node: Node, scope: Scope) -> object:
        scopes, (value,) = self._for(node, scope)
        return [self.evaluate(value, inner) for inner in scopes]

    def _eval_for_object_expr(self, node: Node, scope: Scope) -> object:
        scopes, (key_node, value_node) = self._for(node, scope)
        grouping = "..." in _tokens(node)
        result: dict[str, object] = {}
        groups: dict[str, list[object]] = {}
        for inner in scopes:
            key = to_string(self.evaluate(key_node, inner))
            value = self.evaluate(value_node, inner)
            if grouping:
                result[key] = groups.setdefault(key, [])
                groups[key].append(value)
            elif key in result:
                raise DynamicError(f"duplicate key {key!r} in a for expression (use ... to group)")
            else:
                result[key] = value
        return result

    def _eval_conditional(self, node: Node, scope: Scope) -> object:
        condition, if_true, if_false = _trees(node)
        return self.evaluate(if_true if _bool(self.evaluate(condition, scope)) else if_false, scope)

    def _eval_unary_op(self, node: Node, scope: Scope) -> object:
        operand = self.evaluate(_trees(node)[0], scope)
        if _tokens(node)[0] == "!":
            return not _bool(operand)
        return -_number(operand)

    def _eval_binary_op(self, node: Node, scope: Scope) -> object:
        left_node, term = _trees(node)[:2]
        operator_node, right_node = _trees(term)
        op = _name(operator_node)
        left = self.evaluate(left_node, scope)
        if op in ("&&", "||"):
            if _bool(left) == (op == "||"):
                return op == "||"
            return _bool(self.evaluate(right_node, scope))
        right = self.evaluate(right_node, scope)
        if op in ("==", "!="):
            return equal(left, right) == (op == "==")
        a, b = _number(left), _number(right)
        if op in ("<", ">", "<=", ">="):
            return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
        return _arith(op, a, b)


@dataclass(frozen=True)
class Reference:
    """A name an expression refers to: its root, the attribute names that follow it up to the first index."""

    root: str
    names: tuple[str, ...]
    line: int


def references(expr: Node) -> list[Reference]:
    """Every reference in `expr` (unevaluated branches included), except to names its for-expressions bind."""
    found: list[Reference] = []

    def walk(node: Node, bound: frozenset[str]) -> None:
        if node.data in ("for_tuple_expr", "for_object_expr"):
            intro, *body = _trees(node)
            *names, collection = _trees(intro)
            walk(collection, bound)
            for part in body:
                walk(part, bound | {_name(n) for n in names})
            return
        if node.data == "get_attr":
            return
        if node.data == "function_call":
            for part in _trees(node)[1:]:
                if part.data == "arguments":
                    walk(part, bound)
            return
        if node.data == "object_elem_key" and _is_bare_name(_trees(node)[0]):
            return
        spine = _spine(node)
        if spine is None:
            for child in _trees(node):
                walk(child, bound)
            return
        root, attributes, subexpressions, _ = spine
        if root not in bound:
            found.append(Reference(root, tuple(attributes), node.meta.line))
        for sub in subexpressions:
            walk(sub, bound)

    walk(expr, frozenset())
    return found


def _is_bare_name(node: Node) -> bool:
    return node.data == "keyword" or (
        node.data == "expr_term" and not _tokens(node) and _trees(node)[0].data == "identifier"
    )


def _spine(node: Node) -> tuple[str, list[str], list[Node], bool] | None:
    """A traversal (`a.b[c].d`): root name, leading attribute names, index expressions, still-open flag."""
    if node.data == "identifier":
        return _name(node), [], [], True
    if node.data == "expr_term":
        return _spine(_trees(node)[0]) if not _tokens(node) else None
    if node.data not in ("get_attr_expr_term", "index_expr_term", "attr_splat_expr_term", "full_splat_expr_term"):
        return None
    base, accessor = _trees(node)
    spine = _spine(base)
    if spine is None:
        return None
    root, names, subexpressions, open_ = spine
    accessors = _trees(accessor) if node.data.endswith("splat_expr_term") else [accessor]
    for step in accessors:
        if step.data == "get_attr" and open_ and not node.data.endswith("splat_expr_term"):
            names = [*names, _name(_trees(step)[0])]
        else:
            open_ = False
            if step.data == "braces_index":
                subexpressions = [*subexpressions, _trees(step)[0]]
    return root, names, subexpressions, open_ and not node.data.endswith("splat_expr_term")


# ---- functions ----


def _merge(*maps: object) -> dict[str, object]:
    result: dict[str, object] = {}
    for value in maps:
        if value is not None and not isinstance(value, dict):
            raise DynamicError(f"merge() takes maps or objects, not {describe(value)}")
        result.update(value or {})
    return result


def _one(collection: object) -> object:
    elements = [value for _, value in items(collection)]
    if len(elements) > 1:
        raise DynamicError(f"one() needs at most one element, got {len(elements)}: {describe(elements)}")
    return elements[0] if elements else None


def _sequence(value: object) -> list[object]:
    if isinstance(value, list | tuple):
        return list(value)
    raise DynamicError(f"{describe(value)} is not a list or set")


def _mapping(value: object) -> dict[str, object]:
    if isinstance(value, dict):
        return value
    raise DynamicError(f"{describe(value)} is not a map or object")


def _distinct(values: object) -> list[object]:
    result: list[object] = []
    for value in _sequence(values):
        if not any(equal(value, seen) for seen in result):
            result.append(value)
    return result


def _coalesce(*values: object) -> object:
    for value in values:
        if value is not None and value != "":
            return value
    raise DynamicError("every argument is null or empty")


def _lookup(mapping: object, key: object, *default: object) -> object:
    found = _mapping(mapping)
    if to_string(key) in found:
        return found[to_string(key)]
    if default:
        return default[0]
    raise DynamicError(f"no key {key!r} and no default")


def _replace(text: object, search: object, replacement: object) -> str:
    text, search, replacement = to_string(text), to_string(search), to_string(replacement)
    if len(search) > 1 and search.startswith("/") and search.endswith("/"):
        python = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", replacement)
        return re.sub(search[1:-1], python, text)
    return text.replace(search, replacement)


def _format(spec: object, *values: object) -> str:
    """format() for the verbs %s %v %d %f %t %q with flags, width and precision (printf-like, as Go's)."""
    remaining = list(values)

    def verb(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        if not remaining:
            raise DynamicError(f"too few arguments for {spec!r}")
        value, flags, kind = remaining.pop(0), match.group(1), match.group(2)
        if kind == "d":
            return f"%{flags}d" % int(_number(value))
        if kind == "f":
            return f"%{flags}f" % _number(value)
        return f"%{flags}s" % (json.dumps(to_string(value)) if kind == "q" else to_string(value))

    return re.sub(r"%([-+ 0-9.]*)([sdvqtf])|%%", verb, to_string(spec))


def _regex(pattern: object, text: object) -> object:
    match = re.search(to_string(pattern), to_string(text))
    if match is None:
        raise DynamicError(f"{pattern!r} does not match {text!r}")
    if match.re.groupindex:
        return match.groupdict()
    return list(match.groups()) if match.groups() else match.group(0)


def _decoded(value: object) -> object:
    """YAML/JSON data as Terraform values: keys as strings."""
    if isinstance(value, dict):
        return {to_string(k): _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def _tostring(value: object) -> object:
    return None if value is None else to_string(value)


def make_functions(base_dir: Path) -> dict[str, Callable[..., object]]:
    """Terraform's functions this evaluator knows; file() reads paths relative to `base_dir`."""

    def file(path: object) -> str:
        target = base_dir / to_string(path)
        try:
            return target.read_text(encoding="utf-8")
        except OSError as error:
            raise DynamicError(f"cannot read {target}: {error.strerror}") from None

    def decode(loader: Callable[[str], object]) -> Callable[[object], object]:
        def run(text: object) -> object:
            try:
                return _decoded(loader(to_string(text)))
            except (ValueError, yaml.YAMLError) as error:
                raise DynamicError(str(error)) from None

        return run

    return {
        "abs": lambda x: abs(_number(x)),
        "alltrue": lambda xs: all(_bool(x) for x in _sequence(xs)),
        "anytrue": lambda xs: any(_bool(x) for x in _sequence(xs)),
        "ceil": lambda x: math.ceil(_number(x)),
        "coalesce": _coalesce,
        "compact": lambda xs: [x for x in _sequence(xs) if x not in (None, "")],
        "concat": lambda *lists: [x for xs in lists for x in _sequence(xs)],
        "contains": lambda xs, x: any(equal(x, y) for y in _sequence(xs)),
        "distinct": _distinct,
        "endswith": lambda s, suffix: to_string(s).endswith(to_string(suffix)),
        "file": file,
        "flatten": lambda xs: [y for x in _sequence(xs) for y in (_sequence(x) if isinstance(x, list) else [x])],
        "floor": lambda x: math.floor(_number(x)),
        "format": _format,
        "join": lambda sep, *lists: to_string(sep).join(to_string(x) for xs in lists for x in _sequence(xs)),
        "jsondecode": decode(json.loads),
        "jsonencode": lambda x: json.dumps(x, separators=(",", ":"), sort_keys=True),
        "keys": lambda m: sorted(_mapping(m)),
        "length": lambda x: len(x) if isinstance(x, str | list | tuple | dict) else len(_sequence(x)),
        "lookup": _lookup,
        "lower": lambda s: to_string(s).lower(),
        "max": lambda *xs: max(_number(x) for x in xs),
        "merge": _merge,
        "min": lambda *xs: min(_number(x) for x in xs),
        "one": _one,
        "regex": _regex,
        "replace": _replace,
        "setproduct": lambda *sets: [list(p) for p in itertools.product(*(_sequence(s) for s in sets))],
        "sort": lambda xs: sorted(to_string(x) for x in _sequence(xs)),
        "split": lambda sep, s: to_string(s).split(to_string(sep)),
        "startswith": lambda s, prefix: to_string(s).startswith(to_string(prefix)),
        "tobool": lambda x: None if x is None else _bool(x),
        "tolist": lambda xs: list(_sequence(xs)),
        "tomap": _mapping,
        "tonumber": lambda x: None if x is None else _number(x),
        "toset": lambda xs: TfSet.of(_sequence(xs)),
        "tostring": _tostring,
        "trimspace": lambda s: to_string(s).strip(),
        "upper": lambda s: to_string(s).upper(),
        "values": lambda m: [value for _, value in sorted(_mapping(m).items())],
        "yamldecode": decode(yaml.safe_load),
        "zipmap": lambda ks, vs: dict(zip((to_string(k) for k in _sequence(ks)), _sequence(vs), strict=True)),
    }
