"""Seeded multi-turn conversations with one stated fact, built to an exact token count through the chat template."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["user", "assistant"]
NO_TEMPLATE_SUFFIX = "\n\nAssistant:"
TOLERANCE = 0.01  # the count is exact whenever whole words can hit it; it is never off by more than this fraction

_PROJECTS = ("Bluebird", "Lighthouse", "Juniper", "Northstar", "Pebble", "Driftwood", "Lantern", "Saffron")
_PEOPLE = ("Priya", "Marcus", "Elena", "Tomas", "Aiko", "Dmitri", "Grace", "Hassan", "Lucia", "Owen")
_COMPONENTS = (
    "the billing service", "the onboarding flow", "the search index", "the mobile app", "the reporting pipeline",
    "the admin console", "the notification worker", "the import tool", "the settings page", "the public API",
)
_MILESTONES = ("beta launch", "design review", "code freeze", "customer demo", "quarterly planning", "release")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "next week", "the end of the month")
_USER_LINES = (
    "Quick update on {project}: {person} finished the first pass on {component} yesterday.",
    "Do you think we should move the review of {component} to {day}?",
    "{person} asked whether {component} needs another round of load testing before the {milestone}.",
    "I spent the morning reading through the open tickets for {component}.",
    "The {milestone} for {project} is still planned for {day}, right?",
    "Can you help me word a short status note about {component} for the team?",
    "{person} thinks {component} is in good shape, but I am not so sure.",
    "We had a long meeting about {component} today and did not reach a decision.",
    "What would you focus on first if you had to get {component} ready for the {milestone}?",
    "I am trying to plan the week around the {milestone}; any thoughts?",
)
_ASSISTANT_LINES = (
    "That sounds like steady progress.",
    "If {person} has the context, it may be quickest to let them lead the work on {component}.",
    "I would keep the {milestone} date as it is unless the test results say otherwise.",
    "A short checklist could help: what changed, what was tested, and what is still open.",
    "It might be worth writing down the open questions about {component} before the next meeting.",
    "Moving things to {day} seems reasonable if nobody is blocked by it.",
    "A second pair of eyes on {component} rarely hurts, especially before the {milestone}.",
    "You could ask {person} for a quick summary so the rest of the team stays in the loop.",
    "Breaking the remaining work on {component} into smaller tickets would make progress easier to see.",
    "It is normal for a project like {project} to feel uncertain at this stage.",
    "I would start with whatever blocks other people, then move on to the polish.",
    "A brief note in the team channel on {day} would keep everyone aligned.",
)
_SECRETS = (
    ("staging database", "password"), ("build server", "password"), ("VPN gateway", "passphrase"),
    ("analytics dashboard", "password"), ("release signing key", "passphrase"), ("shared test account", "password"),
)
# Upper-case tree names: the filler never writes an upper-case word followed by digits, so the answer occurs once.
_SHORT_WORDS = ("so", "and", "then", "well", "too", "indeed", "anyway", "as planned", "for now", "I think")
_CODE_WORDS = ("MAPLE", "CEDAR", "BIRCH", "ALDER", "ROWAN", "WILLOW", "HAZEL", "LARCH", "SPRUCE", "ASPEN")


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """A system prompt, alternating user/assistant turns, then a final user question about `fact`.

    `turns` always start with a user turn and hold whole user/assistant pairs. `fact_turn` is the
    index in `turns` of the user turn that states `fact`, or None once a history budget dropped it.
    """

    system: str
    turns: tuple[Turn, ...]
    question: str
    answer: str
    fact: str
    fact_turn: int | None

    @property
    def pairs(self) -> int:
        return len(self.turns) // 2

    @property
    def fact_depth(self) -> float | None:
        """The fact's pair index as a fraction of the last pair index: 0.0 is the first pair, 1.0 the last."""
        if self.fact_turn is None:
            return None
        return (self.fact_turn // 2) / (self.pairs - 1) if self.pairs > 1 else 0.0


def render(tokenizer: Any, conversation: Conversation) -> tuple[str, tuple[int, ...]]:
    """The prompt text (through the tokenizer's chat template, ending with the assistant's cue) and its token ids.

    The ids are `tokenizer(text, add_special_tokens=False)["input_ids"]`, as for the haystack prompts, so
    the template's own special tokens are counted once. A tokenizer without a chat template gets plain
    "System:/User:/Assistant:" paragraphs ending with "Assistant:".
    """
    text = _render_text(tokenizer, conversation)
    return text, tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_conversation(tokenizer: Any, *, length: int, depth: float, seed: int = 0) -> Conversation:
    """A seeded project chat of `length` tokens (exact when whole words can hit it, always within 1%).

    Args:
        tokenizer: a transformers tokenizer; the prompt is counted as `render` renders it.
        length: the number of tokens the rendered prompt must have.
        depth: which pair states the fact: 0.0 the first pair, 1.0 the last pair before the question;
            the pair index is `round(depth * (pairs - 1))`, so it moves as the length adds pairs.
        seed: picks the project, the fact and every filler turn.

    Returns:
        The Conversation. Its last filler assistant turn is cut or extended word by word to hit `length`.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be between 0.0 and 1.0, got {depth!r}")
    fact, question, answer = _make_fact(seed)
    builder = _Builder(tokenizer, seed, fact, question, answer, depth)

    minimum = builder.count(1, 1)
    if length < minimum:
        raise ValueError(
            f"length {length} is too small: the system prompt, the fact, one short exchange and the question "
            f"take {minimum} tokens; use length >= {minimum}"
        )
    fillers = builder.estimate_fillers(length)
    # The estimate adds per-pair costs; the real count decides, with the padded turn at one word.
    while builder.count(fillers + 1, 1) <= length:
        fillers += 1
    while fillers > 1 and builder.count(fillers, 1) > length:
        fillers -= 1
    conversation = builder.fit(fillers, length)
    text, ids = render(tokenizer, conversation)
    if abs(len(ids) - length) > TOLERANCE * length:  # only when the next word costs more than 1% of the length
        raise ValueError(
            f"could not build a conversation within 1% of {length} tokens (the closest was {len(ids)}); "
            "try a slightly different length"
        )
    if text.count(answer) != 1:
        raise RuntimeError(f"the answer {answer!r} occurs {text.count(answer)} times in the prompt; expected once")
    return conversation


def _render_text(tokenizer: Any, conversation: Conversation) -> str:
    messages = [{"role": "system", "content": conversation.system}]
    messages += [{"role": turn.role, "content": turn.content} for turn in conversation.turns]
    messages.append({"role": "user", "content": conversation.question})
    if getattr(tokenizer, "chat_template", None) is None:
        return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + NO_TEMPLATE_SUFFIX
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def _make_fact(seed: int) -> tuple[str, str, str]:
    """A seeded fact such as "Note: the staging database password is MAPLE-2231.", its question and answer."""
    rng = random.Random(f"conversation-fact:{seed}")
    thing, kind = rng.choice(_SECRETS)
    answer = f"{rng.choice(_CODE_WORDS)}-{rng.randint(1000, 9999)}"
    return (
        f"Note: the {thing} {kind} is {answer}.",
        f"What is the {thing} {kind} I mentioned earlier? Reply with the {kind} only.",
        answer,
    )


@dataclass(frozen=True)
class _Setting:
    """What a seed's chat is about; every filler pair draws its names from here."""

    project: str
    people: tuple[str, ...]
    components: tuple[str, ...]

    def fill(self, template: str, rng: random.Random) -> str:
        return template.format(
            project=self.project, person=rng.choice(self.people), component=rng.choice(self.components),
            milestone=rng.choice(_MILESTONES), day=rng.choice(_DAYS),
        )


class _Builder:
    """Lays out filler pairs around the fact pair and counts the rendered prompt.

    Each filler pair is drawn from its own seeded stream, so pair i reads the same whatever the length;
    the last filler pair's assistant turn is the padded one, its words a prefix of an endless reply.
    """

    def __init__(self, tokenizer: Any, seed: int, fact: str, question: str, answer: str, depth: float) -> None:
        self.tokenizer = tokenizer
        self.seed = seed
        self.fact, self.question, self.answer, self.depth = fact, question, answer, depth
        rng = random.Random(f"conversation:{seed}")
        self.setting = _Setting(rng.choice(_PROJECTS), tuple(rng.sample(_PEOPLE, 4)), tuple(rng.sample(_COMPONENTS, 4)))
        self.system = (
            f"You are a helpful assistant for the team building {self.setting.project}. "
            "Answer questions using what was said earlier in this conversation."
        )
        self.acknowledgement = "Thanks, I have noted that and will keep it in mind."
        self._pairs: list[tuple[str, str]] = []
        self._replies: dict[int, list[str]] = {}

    def pair(self, index: int) -> tuple[str, str]:
        while len(self._pairs) <= index:
            rng = random.Random(f"conversation-pair:{self.seed}:{len(self._pairs)}")
            user = self.setting.fill(rng.choice(_USER_LINES), rng)
            reply = " ".join(self.setting.fill(line, rng) for line in rng.sample(_ASSISTANT_LINES, rng.randint(2, 4)))
            self._pairs.append((user, reply))
        return self._pairs[index]

    def reply_words(self, index: int, count: int) -> list[str]:
        """The first `count` words of filler pair `index`'s reply, continued with more sentences when needed."""
        words = self._replies.setdefault(index, self.pair(index)[1].split())
        while len(words) < count:  # each added sentence is seeded by where it starts, whatever asked for it first
            rng = random.Random(f"conversation-more:{self.seed}:{index}:{len(words)}")
            words.extend(self.setting.fill(rng.choice(_ASSISTANT_LINES), rng).split())
        return words[:count]

    def conversation(self, fillers: int, reply: str) -> Conversation:
        """`fillers` filler pairs with the fact pair at depth; `reply` replaces the last filler pair's reply."""
        at = round(self.depth * fillers)  # pairs = fillers + 1, so the last pair index is `fillers`
        turns: list[Turn] = []
        for index in range(fillers):
            if index == at:
                turns += [Turn("user", self.fact), Turn("assistant", self.acknowledgement)]
            user, natural = self.pair(index)
            turns += [Turn("user", user), Turn("assistant", reply if index == fillers - 1 else natural)]
        if at == fillers:
            turns += [Turn("user", self.fact), Turn("assistant", self.acknowledgement)]
        return Conversation(self.system, tuple(turns), self.question, self.answer, self.fact, 2 * at)

    def padded(self, fillers: int, words: int) -> Conversation:
        return self.conversation(fillers, " ".join(self.reply_words(fillers - 1, words)))

    def count(self, fillers: int, words: int) -> int:
        return _count(self.tokenizer, self.padded(fillers, words))

    def estimate_fillers(self, length: int) -> int:
        """The number of whole filler pairs that fit, from each pair's cost rendered alone (at least 1)."""
        bare = Conversation(self.system, (), self.question, self.answer, self.fact, None)
        bare_count = _count(self.tokenizer, bare)
        total = _count(self.tokenizer, dataclasses.replace(bare, turns=(Turn("user", self.fact), Turn("assistant", self.acknowledgement))))
        fillers = 0
        while True:
            user, reply = self.pair(fillers)
            alone = dataclasses.replace(bare, turns=(Turn("user", user), Turn("assistant", reply)))
            total += _count(self.tokenizer, alone) - bare_count
            if total > length:
                return max(1, fillers)
            fillers += 1

    def fit(self, fillers: int, length: int) -> Conversation:
        """The conversation whose padded reply brings the prompt closest to `length`, exactly when words allow."""
        high = max(1, len(self.pair(fillers - 1)[1].split()))
        while self.count(fillers, high) < length:
            high *= 2
        low = 1  # count(fillers, 1) <= length: the caller chose `fillers` so
        while low < high:  # the most words whose prompt is still within `length`
            middle = (low + high + 1) // 2
            if self.count(fillers, middle) <= length:
                low = middle
            else:
                high = middle - 1
        best = self.padded(fillers, low)
        short = length - _count(self.tokenizer, best)
        if short == 0:
            return best
        # The next word costs more tokens than are missing; a short common word often costs exactly the rest.
        words = self.reply_words(fillers - 1, low)
        for extra in _SHORT_WORDS:
            candidate = self.conversation(fillers, " ".join([*words, extra]))
            if _count(self.tokenizer, candidate) == length:
                return candidate
        over = self.padded(fillers, low + 1)
        return over if _count(self.tokenizer, over) - length < short else best


def _count(tokenizer: Any, conversation: Conversation) -> int:
    return len(render(tokenizer, conversation)[1])
