"""Each Cloud Run service's environment, read from the Terraform configuration without Terraform.

`service_environments` finds every `google_cloud_run_v2_service` resource in a Terraform
directory and evaluates the `env` entries of its container for every instance (`for_each`,
`count`): plain `value`s, and `value_source.secret_key_ref.secret` (the Secret Manager secret id).
Both static `env {}` blocks and `dynamic "env"` blocks (for_each, `iterator`, `content`) count.
The expressions are evaluated by replicate_relay.devstack.hcl_eval, which reads python-hcl2's parse tree.

References resolve the way Terraform resolves them, lazily: only what the environments need.
- `var.NAME`: `variables[NAME]` if given, else the variable's `default`; a variable with neither,
  or a given name that variables.tf does not declare, is an error.
- `local.NAME`: that local value, evaluated once.
- `TYPE.NAME.ATTR`, `TYPE.NAME[KEY].ATTR`, `data.TYPE.NAME.ATTR`: the instance's own argument
  ATTR, evaluated with `each.key`/`each.value` (or `count.index`) bound. An attribute that is not
  an argument (computed by the provider: a service account's `email`, a project's `number`, an
  `id`) comes from `resources`, keyed by the attribute's address as Terraform writes it:
  `google_service_account.push.email`, `google_service_account.service["receiver"].email`
  (string keys in double quotes), `google_compute_instance.vm[0].id` (count),
  `data.google_project.this.number`. Arguments always come from the configuration, never from
  `resources`. An attribute found in neither is an error naming its address.
- `path.module` / `path.root` / `path.cwd`: the Terraform directory; `file()` reads relative to it.
Every reference in an expression that is evaluated is checked against the declarations first,
including those in branches that are not taken, as `terraform validate` would.

Not modelled: variable `type` conversions and validations, nested blocks as attribute values,
providers, modules, and values Terraform knows only after apply beyond those in `resources`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from replicate_relay.devstack.hcl_eval import (
    Attribute,
    Block,
    DynamicError,
    Evaluator,
    Lazy,
    Scope,
    TerraformEvalError,
    TfSet,
    describe,
    items,
    load_blocks,
    located,
    make_functions,
    plain,
    references,
    to_string,
)

__all__ = ["ServiceEnv", "TerraformEvalError", "service_environments"]

CLOUD_RUN_SERVICE = "google_cloud_run_v2_service"
_META_ARGUMENTS = frozenset({"count", "for_each", "depends_on", "provider", "lifecycle"})
_BUILTIN_ROOTS = frozenset({"var", "local", "data", "path", "each", "count", "self", "terraform"})
_Selector = Callable[[str], object]


@dataclass(frozen=True)
class ServiceEnv:
    """One Cloud Run service's container environment, as Terraform would set it."""

    name: str  # the service's `name` argument, e.g. "receiver", "job-status"
    values: Mapping[str, str]  # plain variables (`value`), converted to strings as Terraform does
    secrets: Mapping[str, str]  # variable name -> Secret Manager secret (`value_source.secret_key_ref.secret`)


def local_computed(project: str) -> dict[str, str]:
    """Stand-ins for the attributes the provider computes at apply time that infra/terraform's
    service environments read (the `resources` of service_environments), for local containers."""
    return {
        "google_service_account.push.email": f"relay-push@{project}.iam.gserviceaccount.com",
        "data.google_project.this.number": "123456789012",
    }


def service_environments(
    terraform_dir: Path, *, variables: Mapping[str, object], resources: Mapping[str, object]
) -> dict[str, ServiceEnv]:
    """The environment of every Cloud Run service instance in `terraform_dir`, by service name.

    `variables` gives `var.*` values (others take their defaults); `resources` gives computed
    attributes by address, e.g. {"google_service_account.push.email": "relay-push@p.iam.gserviceaccount.com"}.
    Raises TerraformEvalError naming the file, line and address of whatever cannot be resolved.
    """
    blocks = load_blocks(terraform_dir)
    if not blocks:
        raise TerraformEvalError(f"no Terraform configuration (*.tf) in {terraform_dir}")
    module = _Module(terraform_dir, blocks, variables, resources)
    found: dict[str, ServiceEnv] = {}
    for (type_, _), resource in sorted(module.resources.items()):
        if type_ != CLOUD_RUN_SERVICE:
            continue
        for instance in resource.instances():
            env = module.container_env(instance)
            if env.name in found:
                raise TerraformEvalError(f"two Cloud Run services are named {env.name!r} ({instance.description})")
            found[env.name] = env
    if not found:
        raise TerraformEvalError(f"no {CLOUD_RUN_SERVICE} resource in {terraform_dir}")
    return found


class _Module:
    """One Terraform module's declarations, and the values of what has been evaluated so far."""

    def __init__(
        self, directory: Path, blocks: list[Block], variables: Mapping[str, object], resources: Mapping[str, object]
    ) -> None:
        self.directory = directory.resolve()
        self.given_variables = variables
        self.given_attributes = resources
        self.variables: dict[str, Block] = {}
        self.locals: dict[str, Attribute] = {}
        self.resources: dict[tuple[str, str], _Resource] = {}
        self.data: dict[tuple[str, str], _Resource] = {}
        for block in blocks:
            self._declare(block)
        undeclared = sorted(set(variables) - set(self.variables))
        if undeclared:
            raise TerraformEvalError(f"variables given that {directory} does not declare: {', '.join(undeclared)}")
        self.evaluator = Evaluator(self.root, make_functions(self.directory))
        self._values: dict[str, object] = {}  # by address: "local.x", "var.y", 'a.b["k"].name'
        self._in_progress: list[str] = []

    def _declare(self, block: Block) -> None:
        where = f"{block.file}:{block.line}"
        if block.type == "variable" and len(block.labels) == 1:
            if block.labels[0] in self.variables:
                raise TerraformEvalError(f"{where}: variable {block.labels[0]!r} is declared twice")
            self.variables[block.labels[0]] = block
        elif block.type == "locals":
            for name, attribute in block.attributes.items():
                if name in self.locals:
                    raise TerraformEvalError(f"{attribute.file}:{attribute.line}: local.{name} is defined twice")
                self.locals[name] = attribute
        elif block.type in ("resource", "data") and len(block.labels) == 2:
            table = self.resources if block.type == "resource" else self.data
            if (block.labels[0], block.labels[1]) in table:
                raise TerraformEvalError(f"{where}: {block.type} {'.'.join(block.labels)} is declared twice")
            table[block.labels[0], block.labels[1]] = _Resource(self, block)

    # ---- evaluation ----

    def evaluate(self, attribute: Attribute, scope: Scope, what: str) -> object:
        """`attribute`'s value; errors name `what` (an address or a description) and where it is defined."""
        try:
            self.check_references(attribute, scope)
            return self.evaluator.evaluate(attribute.expr, scope)
        except TerraformEvalError as error:
            raise error.within(f"{what} ({attribute.file}:{attribute.line})", attribute.file) from None

    def value_of(self, address: str, attribute: Attribute, scope: Scope) -> object:
        """`attribute` evaluated once per address, with cycles reported."""
        if address in self._values:
            return self._values[address]
        if address in self._in_progress:
            cycle = " -> ".join([*self._in_progress[self._in_progress.index(address) :], address])
            raise TerraformEvalError(f"cycle: {cycle}")
        self._in_progress.append(address)
        try:
            value = self.evaluate(attribute, scope, address)
        finally:
            self._in_progress.pop()
        self._values[address] = value
        return value

    def check_references(self, attribute: Attribute, scope: Scope) -> None:
        """Every name `attribute` refers to is declared (or bound in `scope`), as `terraform validate` checks."""
        for ref in references(attribute.expr):
            if ref.root not in scope:
                problem = self._undeclared(ref.root, ref.names)
                if problem:
                    raise TerraformEvalError(problem, line=ref.line)

    def _undeclared(self, root: str, names: tuple[str, ...]) -> str | None:
        """What is wrong with the reference root.names[0]..., or None if it names something declared."""
        first = names[0] if names else ""
        if root in ("each", "count", "self"):
            return f"{root}.{first} is not available here"
        data = ".".join(names[:2])
        checks = {
            "var": (first in self.variables, f"reference to undeclared input variable var.{first}"),
            "local": (first in self.locals, f"reference to undeclared local value local.{first}"),
            "path": (first in ("module", "root", "cwd"), f"unknown path.{first}"),
            "data": (tuple(names[:2]) in self.data, f"reference to undeclared data source data.{data}"),
            "terraform": (True, ""),
        }
        resource = ((root, first) in self.resources, f"reference to undeclared resource {root}.{first}")
        declared, problem = checks.get(root, resource)
        return None if declared else problem

    def root(self, name: str) -> object:
        """What a name not bound in the scope refers to."""
        if name == "var":
            return _Namespace("var", self.variable)
        if name == "local":
            return _Namespace("local", self.local)
        if name == "data":
            return _Namespace(
                "data", lambda type_: _Namespace(f"data.{type_}", lambda n: self._lookup("data", type_, n))
            )
        if name == "path":
            return dict.fromkeys(("module", "root", "cwd"), str(self.directory))
        if name in _BUILTIN_ROOTS:
            raise TerraformEvalError(f"{name!r} is not available here")
        return _Namespace(name, lambda resource_name: self._lookup("resource", name, resource_name))

    def _lookup(self, mode: str, type_: str, name: str) -> _Resource:
        table = self.resources if mode == "resource" else self.data
        found = table.get((type_, name))
        if found is None:
            prefix = "data." if mode == "data" else ""
            raise TerraformEvalError(f"reference to undeclared {mode} {prefix}{type_}.{name}")
        return found

    def variable(self, name: str) -> object:
        block = self.variables.get(name)
        if block is None:
            raise TerraformEvalError(f"reference to undeclared input variable var.{name}")
        if name in self.given_variables:
            return self.given_variables[name]
        default = block.attributes.get("default")
        if default is None:
            raise TerraformEvalError(
                f"var.{name} ({block.file}:{block.line}) has no default and no value was given for it in `variables`"
            )
        return self.value_of(f"var.{name}", default, {})

    def local(self, name: str) -> object:
        attribute = self.locals.get(name)
        if attribute is None:
            raise TerraformEvalError(f"reference to undeclared local value local.{name}")
        return self.value_of(f"local.{name}", attribute, {})

    # ---- Cloud Run ----

    def container_env(self, instance: _Instance) -> ServiceEnv:
        """The env of `instance`'s one container (template.containers)."""
        block = instance.resource.block
        name = to_string(instance.attr("name"))
        containers = [c for template in block.blocks_of("template") for c in template.blocks_of("containers")]
        if len(containers) != 1:
            raise TerraformEvalError(
                f"{instance.description}: expected one template.containers block, found {len(containers)}"
            )
        values: dict[str, str] = {}
        secrets: dict[str, str] = {}
        scope = instance.scope()
        for entry in containers[0].blocks:
            if entry.type == "env":
                self._env_entry(entry, scope, instance, values, secrets)
            elif entry.type == "dynamic" and entry.labels == ("env",):
                for inner in self._dynamic(entry, scope, instance):
                    self._env_entry(entry.blocks_of("content")[0], inner, instance, values, secrets)
        return ServiceEnv(name=name, values=values, secrets=secrets)

    def _dynamic(self, block: Block, scope: Scope, instance: _Instance) -> list[Scope]:
        """The scope of each element of a dynamic block's for_each, its iterator bound."""
        what = f'dynamic "{block.labels[0]}" of {instance.description}'
        for_each = block.attributes.get("for_each")
        if for_each is None or len(block.blocks_of("content")) != 1:
            raise TerraformEvalError(f"{what} ({block.file}:{block.line}) needs for_each and one content block")
        iterator = block.labels[0]
        if "iterator" in block.attributes:
            named = references(block.attributes["iterator"].expr)
            if len(named) != 1 or named[0].names:
                raise TerraformEvalError(f"{what} ({block.file}:{block.line}): iterator must be a bare name")
            iterator = named[0].root
        collection = self.evaluate(for_each, scope, f"for_each of {what}")
        return [{**scope, iterator: {"key": key, "value": value}} for key, value in items(collection)]

    def _env_entry(
        self, body: Block, scope: Scope, instance: _Instance, values: dict[str, str], secrets: dict[str, str]
    ) -> None:
        where = f"{body.file}:{body.line}"
        what = f"an env entry of {instance.description}"
        if "name" not in body.attributes:
            raise TerraformEvalError(f"{where}: {what} has no name")
        name = self._string(body.attributes["name"], scope, f"the name of {what}")
        what = f"env {name} of {instance.description}"
        if name in values or name in secrets:
            raise TerraformEvalError(f"{where}: {what} is set twice")
        sources = body.blocks_of("value_source")
        if "value" in body.attributes and not sources:
            values[name] = self._string(body.attributes["value"], scope, what)
            return
        refs = [ref for source in sources for ref in source.blocks_of("secret_key_ref")]
        if "value" in body.attributes or len(sources) != 1 or len(refs) != 1 or "secret" not in refs[0].attributes:
            raise TerraformEvalError(f"{where}: {what} needs either a value or one value_source.secret_key_ref.secret")
        secrets[name] = self._string(refs[0].attributes["secret"], scope, f"the secret of {what}")

    def _string(self, attribute: Attribute, scope: Scope, what: str) -> str:
        """A value as Cloud Run receives it: a string, or a number or bool converted as Terraform does."""
        value = plain(self.evaluate(attribute, scope, what))
        if value is None or isinstance(value, dict | list | tuple):
            raise TerraformEvalError(
                f"{attribute.file}:{attribute.line}: {what} is {describe(value)}, not a string, number or bool"
            )
        return to_string(value)


class _Namespace(Lazy):
    """var, local, data, a resource type, data.TYPE: the next attribute name selects what is meant."""

    def __init__(self, prefix: str, select: _Selector) -> None:
        self.description = prefix
        self._select = select

    def attr(self, name: str) -> object:
        return self._select(name)


class _Resource(Lazy):
    """A resource or data block: all of its instances."""

    def __init__(self, module: _Module, block: Block) -> None:
        self.module = module
        self.block = block
        prefix = "data." if block.type == "data" else ""
        self.description = f"{prefix}{block.labels[0]}.{block.labels[1]}"

    def keys(self) -> list[object] | None:
        """The instance keys (for_each keys, count indexes), or None for a single instance."""
        if "for_each" in self.block.attributes:
            collection, where = self.for_each(), self.block.attributes["for_each"]
            if isinstance(collection, dict):
                return sorted(collection)
            if isinstance(collection, TfSet) and all(isinstance(key, str) for key in collection):
                return list(collection)
            problem = f"for_each of {self.description} must be a map or a set of strings, not {describe(collection)}"
            raise located(where.file, where.line, problem)
        if "count" in self.block.attributes:
            where = self.block.attributes["count"]
            count = self.module.value_of(f"{self.description}.count", where, {})
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise located(where.file, where.line, f"count of {self.description} is {describe(count)}")
            return list(range(count))
        return None

    def for_each(self) -> object:
        return plain(self.module.value_of(f"{self.description}.for_each", self.block.attributes["for_each"], {}))

    def instances(self) -> list[_Instance]:
        keys = self.keys()
        return [_Instance(self, None)] if keys is None else [_Instance(self, key) for key in keys]

    def attr(self, name: str) -> object:
        if self.keys() is not None:
            raise TerraformEvalError(f"{self.description} has several instances: index it before .{name}")
        return _Instance(self, None).attr(name)

    def index(self, key: object) -> object:
        keys = self.keys()
        if keys is None:
            raise TerraformEvalError(
                f"{self.description} has a single instance (no for_each or count): it cannot be indexed"
            )
        if "count" in self.block.attributes:
            key = int(key) if isinstance(key, int | float) and not isinstance(key, bool) and int(key) == key else key
        else:
            key = to_string(key)
        if key not in keys:
            shown = ", ".join(json.dumps(k) for k in keys)
            raise DynamicError(f"{self.description} has no instance [{json.dumps(key)}] (its keys: {shown or 'none'})")
        return _Instance(self, key)

    def value(self) -> object:
        keys = self.keys()
        if keys is None:
            raise TerraformEvalError(
                f"{self.description} cannot be used as a whole value: refer to one of its attributes"
            )
        instances = [_Instance(self, key) for key in keys]
        if "count" in self.block.attributes:
            return instances
        return {str(instance.key): instance for instance in instances}


class _Instance(Lazy):
    """One instance of a resource; its attributes are its arguments or given computed values."""

    def __init__(self, resource: _Resource, key: object) -> None:
        self.resource = resource
        self.key = key
        if key is None:
            self.description = resource.description
        elif isinstance(key, str):
            self.description = f'{resource.description}["{key}"]'
        else:
            self.description = f"{resource.description}[{key}]"

    def scope(self) -> Scope:
        if self.key is None:
            return {}
        if "count" in self.resource.block.attributes:
            return {"count": {"index": self.key}}
        for_each = self.resource.for_each()
        value = for_each[self.key] if isinstance(for_each, dict) else self.key
        return {"each": {"key": self.key, "value": value}}

    def attr(self, name: str) -> object:
        module, block = self.resource.module, self.resource.block
        address = f"{self.description}.{name}"
        argument = block.attributes.get(name)
        if argument is not None and name not in _META_ARGUMENTS:
            return module.value_of(address, argument, self.scope())
        if address in module.given_attributes:
            return module.given_attributes[address]
        raise TerraformEvalError(
            f"{address} is not an argument of {self.resource.description} ({block.file}:{block.line}) and no value "
            f"was given for it in `resources` (misspelled, or a computed attribute that must be given)"
        )

    def value(self) -> object:
        raise TerraformEvalError(f"{self.description} cannot be used as a whole value: refer to one of its attributes")
