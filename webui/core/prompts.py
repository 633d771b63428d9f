"""AUTOMATIC1111's prompt language, parsed with an explicit grammar.

Three layers, applied in this order:

1. **Composition** - `a cat AND a dog :0.5` splits a prompt into weighted sub-prompts.
2. **Scheduling** - inside each sub-prompt, `[from:to:when]`, `[to:when]`, `[from::when]`
   (prompt editing) and `[a|b|c]` (alternation) make the text depend on the step.
   `when` containing a "." is a fraction of the steps, otherwise an absolute step
   (AUTOMATIC1111's current rule). Everything else, including `(…)`, is kept as text.
3. **Attention** - for one resolved text: `(x)` ×1.1, `((x))` ×1.21, `(x:1.3)`, `[x]` ÷1.1,
   escapes `\\(` `\\)` `\\[` `\\]` `\\\\`, and `BREAK` (start a new 75-token chunk).

The scheduling grammar (whitespace-insensitive around `when`):

    prompt     := (plain | bracketed | '(' prompt (':' prompt)? ')')*
    bracketed  := '[' prompt ']'                      -- emphasis text, kept as is
                | '[' [prompt ':'] prompt ':' NUMBER ']'  -- editing
                | '[' prompt ('|' prompt)+ ']'          -- alternation

It is parsed with an explicit stack (no recursion), so 10,000-deep nesting is fine.
Unbalanced brackets never raise: whatever cannot be parsed stays literal text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

BREAK = "BREAK"
_AND = re.compile(r"\bAND\b")
_WEIGHT_SUFFIX = re.compile(r"^(.*?)\s*:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$", re.S)
_NUMBER = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")


# ---- 1. composition -----------------------------------------------------------------------


@dataclass
class SubPrompt:
    text: str
    weight: float = 1.0


def split_and(prompt: str) -> list[SubPrompt]:
    """`a AND b :0.5` -> [SubPrompt('a', 1), SubPrompt('b', 0.5)]; a plain prompt is one part."""
    parts = []
    for piece in _AND.split(prompt):
        match = _WEIGHT_SUFFIX.match(piece)
        if match:
            parts.append(SubPrompt(match.group(1), float(match.group(2))))
        else:
            parts.append(SubPrompt(piece, 1.0))
    return parts


# ---- 2. scheduling --------------------------------------------------------------------------


@dataclass
class _Node:
    """A parsed piece: text, a sequence, or a bracket construct resolved per step."""

    kind: str                      # "text" | "seq" | "edit" | "alt"
    text: str = ""
    children: list["_Node"] = field(default_factory=list)
    when: float = 0.0              # editing: switch after this step (resolved against steps)
    when_is_fraction: bool = False


def _tokens(text: str) -> list[str]:
    """Split into bracket characters and runs of other text (escapes stay attached to their text)."""
    out: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            buf.append(text[i:i + 2])
            i += 2
            continue
        if ch in "[]():|":
            if buf:
                out.append("".join(buf))
                buf = []
            out.append(ch)
        else:
            buf.append(ch)
        i += 1
    if buf:
        out.append("".join(buf))
    return out


@dataclass
class _Frame:
    opener: str                    # "[" or "(" or "" for the top level
    parts: list[list[_Node]]       # sections separated by ':' (for '[' and '(') or '|' (for '[')
    separators: list[str]          # the separator characters seen, in order


def _seq(nodes: list[_Node]) -> _Node:
    return _Node("seq", children=nodes)


def _as_text(frame: _Frame) -> list[_Node]:
    """Rebuild a frame's original text (used when it is not a schedule construct)."""
    nodes: list[_Node] = [_Node("text", frame.opener)] if frame.opener else []
    for index, part in enumerate(frame.parts):
        if index:
            nodes.append(_Node("text", frame.separators[index - 1]))
        nodes.extend(part)
    return nodes


def _plain_text(nodes: list[_Node]) -> str | None:
    """The text of nodes that contain no schedule constructs, else None."""
    pieces = []
    for node in nodes:
        if node.kind != "text":
            return None
        pieces.append(node.text)
    return "".join(pieces)


def _close_square(frame: _Frame) -> list[_Node]:
    seps = frame.separators
    if seps and all(s == "|" for s in seps):
        return [_Node("alt", children=[_seq(p) for p in frame.parts])]
    if seps and all(s == ":" for s in seps) and len(frame.parts) in (2, 3):
        when_text = _plain_text(frame.parts[-1])
        number = _NUMBER.match(when_text) if when_text is not None else None
        if number:
            raw = number.group(1)
            before = frame.parts[0] if len(frame.parts) == 3 else []
            after = frame.parts[1] if len(frame.parts) == 3 else frame.parts[0]
            return [_Node("edit", children=[_seq(before), _seq(after)], when=float(raw),
                          when_is_fraction="." in raw)]
    return _as_text(frame) + [_Node("text", "]")]


def parse_schedule_tree(text: str) -> _Node:
    """Parse one sub-prompt into a tree of text, editing and alternation nodes."""
    stack = [_Frame("", [[]], [])]
    for token in _tokens(text):
        top = stack[-1]
        if token in "[(":
            stack.append(_Frame(token, [[]], []))
        elif token == "]" and top.opener == "[":
            stack.pop()
            stack[-1].parts[-1].extend(_close_square(top))
        elif token == ")" and top.opener == "(":
            stack.pop()
            stack[-1].parts[-1].extend(_as_text(top) + [_Node("text", ")")])
        elif token in ":|" and top.opener == "[" and not (token == "|" and ":" in top.separators) and not (
                token == ":" and "|" in top.separators):
            top.separators.append(token)
            top.parts.append([])
        elif token == ":" and top.opener == "(" and not top.separators:
            top.separators.append(token)
            top.parts.append([])
        else:
            top.parts[-1].append(_Node("text", token))
    while len(stack) > 1:  # unclosed brackets: keep as literal text
        frame = stack.pop()
        stack[-1].parts[-1].extend(_as_text(frame))
    return _seq(stack[0].parts[0])


def _resolve_when(node: _Node, steps: int) -> int:
    value = node.when * steps if node.when_is_fraction else node.when
    return min(steps, int(value))


def _switch_steps(root: _Node, steps: int) -> list[int]:
    """Every step at which the resolved text may change (AUTOMATIC1111's collect_steps)."""
    found = {steps}
    pending = [root]
    while pending:
        node = pending.pop()
        if node.kind == "edit":
            when = _resolve_when(node, steps)
            if when >= 1:
                found.add(when)
        elif node.kind == "alt":
            found.update(range(1, steps + 1))
        pending.extend(node.children)
    return sorted(found)


def _text_at(root: _Node, step: int, steps: int) -> str:
    out: list[str] = []
    pending: list[_Node] = [root]
    while pending:
        node = pending.pop()
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "seq":
            pending.extend(reversed(node.children))
        elif node.kind == "edit":
            before, after = node.children
            pending.append(before if step <= _resolve_when(node, steps) else after)
        elif node.kind == "alt":
            pending.append(node.children[(step - 1) % len(node.children)])
    return "".join(out)


@dataclass(frozen=True)
class ScheduleEntry:
    end_at_step: int   # use this text while the 0-based sampler step <= end_at_step
    text: str


def prompt_schedule(text: str, steps: int) -> list[ScheduleEntry]:
    """[(end_at_step, text)] for one sub-prompt; consecutive equal texts collapse."""
    steps = max(1, int(steps))
    root = parse_schedule_tree(text)
    entries: list[ScheduleEntry] = []
    for step in _switch_steps(root, steps):
        resolved = _text_at(root, step, steps)
        if entries and entries[-1].text == resolved:
            entries[-1] = ScheduleEntry(step, resolved)
        else:
            entries.append(ScheduleEntry(step, resolved))
    return entries


def text_at_step(schedule: list[ScheduleEntry], step: int) -> str:
    """The text used at 0-based sampler step `step` (first entry with step <= end_at_step)."""
    for entry in schedule:
        if step <= entry.end_at_step:
            return entry.text
    return schedule[-1].text


@dataclass
class ScheduledPrompt:
    """A whole prompt: weighted sub-prompts, each with its step schedule."""

    parts: list[tuple[list[ScheduleEntry], float]]

    def texts(self) -> set[str]:
        return {entry.text for schedule, _ in self.parts for entry in schedule}


def schedule_prompt(prompt: str, steps: int, allow_and: bool = True) -> ScheduledPrompt:
    subprompts = split_and(prompt) if allow_and else [SubPrompt(prompt, 1.0)]
    return ScheduledPrompt([(prompt_schedule(p.text, steps), p.weight) for p in subprompts])


# ---- 3. attention ----------------------------------------------------------------------------

_ATTENTION_TOKEN = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND = 1.1
SQUARE = 1 / 1.1
MAX_WEIGHT = 1000.0  # deep nesting would otherwise overflow to inf and turn the image into NaNs


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Text with weights; `BREAK` becomes ("BREAK", -1). Runs of equal weight are merged.

    Unclosed `(` / `[` emphasise to the end of the text; a stray `)` or `]` is literal.
    """
    pieces: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if piece[1] != -1:
                piece[1] = max(-MAX_WEIGHT, min(MAX_WEIGHT, piece[1] * factor))

    for match in _ATTENTION_TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):  # an escape: the next character is literal (a lone backslash vanishes)
            pieces.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(pieces))
        elif token == "[":
            open_square.append(len(pieces))
        elif weight is not None and open_round:
            scale(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            scale(open_round.pop(), ROUND)
        elif token == "]" and open_square:
            scale(open_square.pop(), SQUARE)
        else:
            for index, part in enumerate(_BREAK_SPLIT.split(token)):
                if index:
                    pieces.append([BREAK, -1.0])
                pieces.append([part, 1.0])
    for start in open_round:
        scale(start, ROUND)
    for start in open_square:
        scale(start, SQUARE)

    merged: list[list] = []
    for piece in pieces:
        if piece[0] == "" and piece[1] != -1:
            continue
        if merged and merged[-1][1] == piece[1] and piece[1] != -1 and merged[-1][1] != -1:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    if not merged:
        return [("", 1.0)]
    return [(text_, weight_) for text_, weight_ in merged]
