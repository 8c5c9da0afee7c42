"""Validation of a grader before it runs: what ``/graders/validate`` answers, and what eval creation
and reinforcement jobs check (``reinforcement_settings``, with their response format). Each problem
is an ``InvalidRequest`` naming the field, e.g.
``grader.graders.exact.reference``: a template naming a field outside ``item``/``sample``, a formula
that does not parse or names an unknown grader, source that is not valid Python, labels that do not
hold the passing labels, a judge model that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from selftune.errors import InvalidRequest, NotFound
from selftune.graders import formula, template
from selftune.graders.python_grader import MAX_SOURCE_BYTES
from selftune.schemas.graders import GraderMessage, LabelModelGrader, MultiGrader, PythonGrader, ScoreModelGrader

if TYPE_CHECKING:
    from selftune.catalog import Catalog
    from selftune.schemas.fine_tuning import ReinforcementMethod

TEXT_PARTS = ("input_text", "output_text")


def check(grader: Any, model_exists: Callable[[str], bool], where: str = "grader") -> None:
    """Raise ``InvalidRequest`` for the first problem of ``grader`` (a ``schemas.graders`` model)."""
    if isinstance(grader, MultiGrader):
        named = grader.named()
        keyed = isinstance(grader.graders, dict)
        for key, sub in named.items():
            check(sub, model_exists, f"{where}.graders.{key}" if keyed else f"{where}.graders")
        try:
            formula.parse(grader.calculate_output, set(named))
        except formula.FormulaError as e:
            raise _invalid(f"{where}.calculate_output", str(e)) from None
        return
    for field in ("input", "reference"):
        if isinstance(getattr(grader, field, None), str):
            _template(getattr(grader, field), f"{where}.{field}")
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        check_messages(grader.input, f"{where}.input")
        if not model_exists(grader.model):
            raise _invalid(f"{where}.model", f"the model {grader.model!r} does not exist here (see GET /v1/models)")
    if isinstance(grader, ScoreModelGrader) and grader.range and not grader.range[0] < grader.range[1]:
        raise _invalid(f"{where}.range", f"{grader.range} is not a range: give [low, high] with low < high")
    if isinstance(grader, LabelModelGrader) and not set(grader.passing_labels) <= set(grader.labels):
        extra = sorted(set(grader.passing_labels) - set(grader.labels))
        raise _invalid(f"{where}.passing_labels", f"{extra} are not among the labels {grader.labels}")
    if isinstance(grader, PythonGrader):
        size = len(grader.source.encode())
        if size > MAX_SOURCE_BYTES:
            raise _invalid(f"{where}.source", f"the source is {size:,} bytes; at most {MAX_SOURCE_BYTES:,}")
        try:
            compile(grader.source, "grader.py", "exec")  # parsed, not run
        except SyntaxError as e:
            raise _invalid(f"{where}.source", f"not valid Python: {e.msg} (line {e.lineno})") from None
        if "def grade" not in grader.source:
            raise _invalid(f"{where}.source", "the source must define grade(sample, item) -> float")


def served(catalog: Catalog, owner: str) -> Callable[[str], bool]:
    """Whether ``owner`` can call a model (a judge, an eval run's model: its own, a base model or one
    shared with it)."""
    from selftune.permissions import resolve_callable  # the catalog's world, only when asked

    def exists(model: str) -> bool:
        try:
            resolve_callable(catalog, model, owner, fetch=False)
        except NotFound:
            return False
        return True

    return exists


def judges(catalog: Catalog, owner: str) -> Callable[[str], bool]:
    """Whether a model can judge ``owner``'s graders: one it can call here, or any model at all when
    the operator named a judge API (``SELFTUNE_JUDGE_BASE_URL``, which then answers for it)."""
    local = served(catalog, owner)
    return lambda model: bool(catalog.settings.judge_base_url) or local(model)


def check_messages(messages: Sequence[GraderMessage], where: str, code: str = "invalid_grader") -> None:
    """Every message is text (images and audio are refused) whose templates name only item and sample."""
    for i, message in enumerate(messages):
        for text in message_texts(message, f"{where}.{i}", code):
            _template(text, f"{where}.{i}.content", code)


def message_texts(message: GraderMessage, where: str, code: str = "invalid_grader") -> list[str]:
    """The text of a grader message's content; images and audio are refused (selftune's judges read text)."""
    parts = message.content if isinstance(message.content, list) else [message.content]
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif part.type in TEXT_PARTS and part.text is not None:
            texts.append(part.text)
        else:
            raise _invalid(
                f"{where}.content", f"{part.type} content is not supported: selftune's models read text", code
            )
    return texts


def _template(text: str, where: str, code: str = "invalid_grader") -> None:
    try:
        template.check(text)
    except template.TemplateError as e:
        raise _invalid(where, str(e), code) from None


def _invalid(param: str, message: str, code: str = "invalid_grader") -> InvalidRequest:
    return InvalidRequest(f"Invalid {param}: {message}", param=param, code=code)


def reinforcement_settings(rft: ReinforcementMethod | None, catalog: Catalog, owner: str) -> dict[str, Any]:
    """A reinforcement job's grader and response format, checked (a 400 naming the field), as stored
    with the job and handed to the recipe. Its judges are the ones ``/graders/run`` may use, served
    here by llama.cpp (the trainer runs them itself: ``train.judging``) or by the judge API."""
    where = "method.reinforcement"
    if rft is None:
        raise _invalid(
            f"{where}.grader",
            "is required: the grader that scores the model's answers (try one with POST "
            "/v1/fine_tuning/alpha/graders/validate)",
        )
    if isinstance(rft.grader, LabelModelGrader):
        raise _invalid(
            f"{where}.grader",
            "a label_model grader scores a reinforcement job only inside a multi grader, as on OpenAI: "
            '{"type": "multi", "graders": {"judge": <this grader>}, "calculate_output": "judge"}',
        )
    check(rft.grader, _trainer_judges(catalog, owner), f"{where}.grader")
    fmt = rft.response_format
    if fmt is not None and fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise _invalid(
            f"{where}.response_format", f"type {fmt.get('type')!r}: use 'json_schema', 'json_object' or 'text'"
        )
    settings: dict[str, Any] = {"grader": rft.grader.model_dump(exclude_none=True)}
    if fmt is not None:
        settings["response_format"] = fmt
    return settings


def judge_models(grader: Any) -> list[str]:
    """The judge models ``grader`` names (its ``multi`` graders' included), each once, in order."""
    names: list[str] = []

    def note(model: str) -> bool:
        names.append(model)
        return True

    check(grader, note)
    return list(dict.fromkeys(names))


def _trainer_judges(catalog: Catalog, owner: str) -> Callable[[str], bool]:
    """``judges``, and a judge served here must have a GGUF: a training process judges with llama.cpp."""
    from selftune.permissions import resolve_callable

    def exists(model: str) -> bool:
        try:
            resolved = resolve_callable(catalog, model, owner, fetch=False)
        except NotFound:
            return bool(catalog.settings.judge_base_url)
        if catalog.gguf(resolved.base) is None:
            raise _invalid(
                "method.reinforcement.grader",
                f"the judge {model!r} ({resolved.base.name}) has no GGUF file, and a reinforcement job's "
                "trainer runs its judges with llama.cpp: choose a judge whose base llama.cpp serves "
                "(GET /health names each model's engine), or set SELFTUNE_JUDGE_BASE_URL to judge elsewhere",
            )
        return True

    return exists
