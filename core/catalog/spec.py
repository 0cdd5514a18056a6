"""What a model is: its fields and the rules between them, what it returns, the quota pool it counts
against, how long it takes, what it costs, and how the ``input`` object sent upstream is made.

A producer's values are checked by :meth:`ModelSpec.validate` (unknown fields refused by name, one error
naming the field and what it allows); the submit step turns them into the upstream's ``input`` with
:meth:`ModelSpec.upstream_input`, given what only it knows then (the upstream URLs of uploaded images,
the parent's task id).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from core.catalog.fields import Field
from core.errors import ValidationError

Output = Literal["video", "image"]
#: A rule between fields: raises ValidationError naming the field that breaks it.
Rule = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class Resolved:
    """What the submit step adds to a job's values to make the upstream input."""

    #: The upstream URLs of the job's images (uploaded to the account's file store), in the job's order.
    image_urls: Sequence[str] = ()
    #: The parent job's upstream task id (on the account the child runs on).
    parent_task_id: str | None = None


@dataclass(frozen=True)
class ParentRule:
    """What a derived job may take from its parent: the parent's kinds of output it accepts, and whether
    it uses the parent's upstream task (then it runs on the parent's account)."""

    outputs: tuple[Output, ...]
    uses_task: bool = True


@dataclass(frozen=True)
class PriceRule:
    """Credits a job is estimated to cost: ``per_task``, plus ``per_second`` (by resolution) times the
    duration its ``seconds_field`` says; a parent's kind of output may change the price (``per_parent``)."""

    per_task: float = 0.0
    per_second: Mapping[str, float] = field(default_factory=dict)
    seconds_field: str | None = None
    per_parent: Mapping[str, float] = field(default_factory=dict)

    def estimate(self, values: Mapping[str, Any], parent_output: str | None = None) -> float:
        credits = self.per_parent.get(parent_output or "", self.per_task)
        if self.seconds_field is not None and self.per_second:
            seconds = float(values.get(self.seconds_field) or 0)
            rate = self.per_second.get(str(values.get("resolution", "")), max(self.per_second.values()))
            credits += rate * seconds
        return round(credits, 2)


@dataclass(frozen=True)
class ModelSpec:
    """One model of the upstream's family: everything ImagineQ needs to know of it, in one place."""

    #: The ``model`` string the upstream takes.
    name: str
    #: What users may call it (``text-to-video``), and the quota pool it counts against.
    short: str
    title: str
    output: Output
    #: Result URLs one task may return (text-to-image may return several images).
    max_outputs: int
    fields: tuple[Field, ...]
    #: Fields sent upstream under another name (``image`` → ``image_urls``), or not at all (None).
    upstream_names: Mapping[str, str | None]
    rules: tuple[Rule, ...]
    #: The pool's in-progress cap and creations per hour, per account, unless the settings say otherwise.
    default_in_progress: int
    default_per_hour: int
    #: The typical generation time (min, max) in seconds: no task is asked about before the minimum.
    generation_s: tuple[float, float]
    price: PriceRule
    parent: ParentRule | None = None
    #: Documented by the upstream (False: its limits and behaviour are our guesses, kept in settings).
    documented: bool = True

    @property
    def pool(self) -> str:
        return self.short

    @property
    def takes_images(self) -> bool:
        return any(f.name in ("image", "images") for f in self.fields)

    @property
    def takes_inputs(self) -> bool:
        """Images or a parent: what the submit step makes ready before createTask."""
        return self.takes_images or self.parent is not None

    def validate(self, values: Mapping[str, Any], *, prefix: str = "") -> dict[str, Any]:
        """The producer's values checked and completed with defaults (ValidationError otherwise)."""
        known = {f.name: f for f in self.fields}
        unknown = sorted(str(name) for name in values if name not in known)
        if unknown:
            raise ValidationError(
                prefix + ", ".join(unknown),
                f"unknown field{'s' if len(unknown) > 1 else ''} for {self.name}; it takes: {', '.join(known)}",
            )
        checked: dict[str, Any] = {}
        for name, spec in known.items():
            value = values.get(name)
            if value is None:
                if spec.required:
                    raise ValidationError(prefix + name, f"is required by {self.name}")
                if spec.default is not None:
                    checked[name] = spec.default
                continue
            try:
                checked[name] = spec.check(value)
            except ValidationError as error:
                raise ValidationError(prefix + error.field, error.message) from None
        for rule in self.rules:
            try:
                rule(checked)
            except ValidationError as error:
                raise ValidationError(prefix + error.field, error.message) from None
        return checked

    def upstream_input(self, values: Mapping[str, Any], resolved: Resolved) -> dict[str, Any]:
        """The ``input`` object sent with createTask."""
        sent: dict[str, Any] = {}
        for name, value in values.items():
            target = self.upstream_names.get(name, name)
            if target is None:
                continue
            sent[target] = value
        if resolved.image_urls:
            sent["image_urls"] = list(resolved.image_urls)
        if resolved.parent_task_id is not None:
            sent["task_id"] = resolved.parent_task_id
        return sent

    def estimate(self, values: Mapping[str, Any], parent_output: str | None = None) -> float:
        return self.price.estimate(values, parent_output)

    def output_of(self, parent_output: str | None = None) -> Output:
        """What a job of this model makes: its own kind, or (upscale) its parent's."""
        if self.parent is not None and parent_output in self.parent.outputs and len(self.parent.outputs) > 1:
            return "video" if parent_output == "video" else "image"
        return self.output
