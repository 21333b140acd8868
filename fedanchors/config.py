"""Typed run configuration: YAML -> frozen dataclasses, with checked overrides.

A leaf of the library: it imports no fedanchors module but its own sections, the errors and
the group spec. What needs the registries or the data (ranges across fields, registered
names, a baseline's settings) is checked by ``fedanchors.configure``, above them.

Unknown keys and wrong types are ``ConfigError``s that name the dotted key and the
closest valid one. ``--set a.b=value`` overrides are parsed as YAML scalars and checked
against the field's type, like nanoGPT's configurator but typed.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from fedanchors.config_sections import (  # noqa: F401 (the sections, importable from here too)
    AnalysisConfig,
    AnchorConfig,
    DataConfig,
    DFRConfig,
    EncoderConfig,
    FeatureConfig,
    FederatedConfig,
    LoggingConfig,
    LossConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    PrivacyConfig,
)
from fedanchors.errors import ConfigError
from fedanchors.group_spec import compact


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3``, ``1E5`` and ``1e+6`` are numbers
    (YAML 1.1, which PyYAML follows, reads a float without a dot as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text safely, with YAML 1.2 floats (see ``_Loader``)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def anchors_used(cfg) -> bool:
    """Whether the run uses the anchors at all (a fit, a separation, or DFR's draws from the
    class moments); when not, clients send no class moments and the server no anchors."""
    a = cfg.anchors
    return a.lambda_fit > 0 or a.lambda_sep > 0 or cfg.dfr.enabled


def anchor_update(cfg) -> str:
    """``anchors.update`` resolved for the run's mode."""
    return cfg.anchors.update or ("barycenter" if cfg.mode == "federated" else "gradient")


@dataclass(frozen=True)
class Config:
    """The whole run."""

    name: str = ""
    # a named federated baseline (fedanchors.baselines: fedavg, lg_fedavg, fedproto,
    # flic_like, fedanchors): its settings replace the config's
    baseline: str = ""
    mode: str = "centralized"
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs"
    deterministic: bool = True
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    dfr: DFRConfig = field(default_factory=DFRConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)


_CHOICES = {
    "mode": ("centralized", "federated"),
    "method.update": ("exp", "softmax", "exp_smooth"),
    "method.objective": ("weighted", "max", "logsumexp"),
    "model.init": ("default", "ntp", "mup"),
    "dfr.val": ("original", "split_from_train"),
    "federated.class_stats": ("running", "exact"),
    "federated.group_loss": ("mean", "first"),
    "anchors.update": ("", "gradient", "barycenter"),
    "data.common_input": ("none", "resize", "pad"),
    "anchors.covariance": ("full", "diag", "none"),
    "anchors.fit": ("w2", "prototype"),
    "federated.head_sharing": ("global", "local"),
    "federated.sampling": ("stratified", "balanced", "uniform"),
    "optim.schedule": ("constant", "cosine"),
    "federated.engine": ("ray", "inprocess"),
    "federated.encoder_sharing": ("space", "client"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
    "method.level": ("group", "client"),
    "method.encoder_weighting": ("own", "q"),
    "method.eta_unit": ("update", "epoch"),
    "privacy.noise": ("central", "local"),
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where it is lossless."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # an already built (and checked) section
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return build_section(tp, value, key)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not of type {_type_name(tp)}")
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (et, _) = typing.get_args(tp)
        return tuple(_coerce(v, et, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def build_section(cls: type, raw: dict, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``raw``, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint} (valid here: {', '.join(names)})")
        kwargs[k] = _coerce(v, hints[k], key)
        if key in _CHOICES and kwargs[k] not in _CHOICES[key]:
            raise ConfigError(f"{key}: {kwargs[k]!r} is not one of {', '.join(_CHOICES[key])}")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=0.01")
    key, _, raw = text.partition("=")
    if _field_type(key.strip().split(".")) is str and not raw.strip().startswith(("'", '"')):
        return key.strip().split("."), raw.strip()  # a name such as 5e1a2 or 1e5 stays text
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(
            f"--set {text!r}: the value is not valid YAML; quote it (e.g. --set 'name=\"a: b\"') or fix its syntax"
        ) from None
    if not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set {text!r}: empty key; expected KEY=VALUE, e.g. --set optim.lr=0.01")
    return key.strip().split("."), value


def _field_type(path: list[str]) -> Any:
    """The annotated type of the config field at ``path`` (None when it is not a field)."""
    cls: Any = Config
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
        if i == len(path) - 1:
            return cls
    return None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of ``raw`` with each ``a.b=value`` set (nested dicts created)."""
    out = _deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    return {k: _deepcopy(v) for k, v in d.items()} if isinstance(d, dict) else d


def read_yaml(path: str | os.PathLike) -> dict:
    """Parse a YAML mapping; a missing or malformed file is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; pass an existing YAML file to --config")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (a binary file?); pass a YAML config") from None
    except OSError as e:
        raise ConfigError(f"config file {str(p)!r} cannot be read ({e.strerror}); check its permissions") from None
    try:
        raw = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}; fix its syntax") from None
    if raw is None:
        raise ConfigError(
            f"config file {str(p)!r} is empty; give it at least one section (e.g. 'mode: centralized'), "
            "or omit --config for the built-in defaults"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    return raw


def parse_config(raw: dict) -> Config:
    """The ``Config`` a plain nested mapping describes: keys and types checked, nothing else.
    Ranges, registry names and the data are checked above this leaf module
    (``fedanchors.configure.from_dict``, which every entry point uses)."""
    return build_section(Config, raw)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON."""
    d = dataclasses.asdict(cfg)
    return _lists(d)


def _lists(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_lists(v) for v in x]
    return x


def resolved_dict(cfg: Config) -> dict:
    """The resolved config as a plain dict, each group with only the keys that differ from
    their defaults (what ``config.yaml`` holds and a sweep point's hash covers)."""
    d = to_dict(cfg)
    d["data"]["groups"] = [compact(g) for g in cfg.data.groups]
    return d


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(resolved_dict(cfg), sort_keys=False))
