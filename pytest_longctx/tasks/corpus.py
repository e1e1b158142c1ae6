"""Seeded text for the task families: haystack kinds (repeat, logs, essay), word lists, keys and values."""

from __future__ import annotations

import itertools
import random
import string
import uuid
from collections.abc import Iterator
from typing import Literal

from .haystack import filler_lines

HaystackKind = Literal["repeat", "logs", "essay"]
ValueKind = Literal["number", "word", "uuid"]

# RULER's "noise" haystack: one sentence, repeated, so nothing in the filler competes with the needle.
REPEAT_LINE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

NOUNS = (
    "river", "garden", "window", "market", "harbor", "village", "mountain", "library", "teacher", "farmer",
    "engine", "bridge", "letter", "forest", "kitchen", "painter", "island", "journey", "machine", "meadow",
    "student", "lantern", "orchard", "valley", "workshop", "country", "doctor", "station", "tower", "castle",
    "ladder", "bottle", "basket", "pencil", "blanket", "candle", "mirror", "carpet", "wagon", "compass",
    "shepherd", "sailor", "merchant", "baker", "weaver", "builder", "pilot", "singer", "writer", "neighbor",
    "council", "company", "family", "museum", "theater", "factory", "school", "church", "prison", "office",
    "storm", "winter", "summer", "morning", "evening", "season", "harvest", "festival", "holiday", "decade",
    "answer", "question", "promise", "argument", "story", "habit", "reason", "method", "problem", "pattern",
    "memory", "silence", "courage", "patience", "wisdom", "fortune", "danger", "comfort", "effort", "balance",
    "canal", "cellar", "chimney", "fountain", "hallway", "pasture", "quarry", "stable", "tavern", "warehouse",
    "ribbon", "saddle", "hammer", "kettle", "needle", "anchor", "barrel", "cabinet", "chisel", "lever",
    "recipe", "ledger", "journal", "almanac", "chronicle", "sketch", "portrait", "melody", "rumor", "treaty",
)
ADJECTIVES = (
    "quiet", "ancient", "narrow", "bright", "careful", "gentle", "heavy", "hollow", "honest", "humble",
    "patient", "restless", "simple", "steady", "stubborn", "sudden", "tired", "wooden", "golden", "distant",
    "familiar", "foreign", "modest", "curious", "crowded", "empty", "fragile", "generous", "hidden", "lively",
    "lonely", "polished", "rusty", "shallow", "sharp", "silent", "sturdy", "tender", "vivid", "weary",
    "crooked", "dusty", "faded", "frozen", "muddy", "painted", "rough", "smooth", "stale", "worn",
    "cheerful", "clever", "eager", "faithful", "gloomy", "graceful", "nervous", "proud", "serious", "thoughtful",
)
VERBS = (  # transitive, third person singular
    "remembers", "carries", "follows", "repairs", "watches", "protects", "describes", "ignores", "finds",
    "builds", "changes", "reaches", "shapes", "gathers", "mends", "paints", "measures", "questions", "trusts",
    "welcomes", "guards", "examines", "shelters", "replaces", "records", "surrounds", "crosses", "praises",
    "borrows", "forgets", "explains", "remodels", "sells", "buys", "leaves", "visits", "studies", "polishes",
)
INTRANSITIVE = (
    "waits", "rests", "wanders", "grows", "fades", "returns", "listens", "settles", "hesitates", "lingers",
    "changes", "trembles", "recovers", "improves", "slows", "endures", "shifts", "softens", "weakens", "sings",
)
ADVERBS = (
    "slowly", "quietly", "carefully", "rarely", "often", "suddenly", "gently", "eventually", "patiently",
    "briefly", "openly", "seldom", "gradually", "steadily", "barely", "nearly", "plainly", "readily",
)
PREPOSITIONS = ("near", "beside", "behind", "above", "below", "across", "around", "beyond", "within", "toward")
OPENERS = (
    "In the end,", "Still,", "For that reason,", "Meanwhile,", "Over time,", "At first,", "Even so,",
    "By contrast,", "Later,", "In most years,", "As a rule,", "Oddly enough,", "In practice,", "Sometimes,",
)
_DETERMINERS = ("the", "a", "every", "each", "one", "this", "that", "no", "some other", "the same")
_TEMPLATES = (
    "{Det} {adj} {noun} {verb} {det} {noun}.",
    "{opener} {det} {noun} {verb} {det} {adj} {noun} {prep} {det} {noun}.",
    "{Det} {noun} {intr} {adv}, and {det} {noun} {verb} {det} {noun}.",
    "Few people notice that {det} {noun} {verb} {det} {adj} {noun}.",
    "If {det} {noun} {intr}, {det} {adj} {noun} {verb} {det} {noun} {adv}.",
    "{Det} {adj} {noun} of {det} {noun} {intr} {prep} {det} {noun}.",
    "{opener} it is {det} {noun} that {verb} {det} {noun}.",
    "Nobody expected that {det} {adj} {noun} {intr} so {adv}.",
    "{Det} {noun} {verb} {det} {noun}, yet {det} {noun} {intr}.",
    "{opener} {det} {adj} {noun} {intr} {prep} {det} {adj} {noun}.",
)

_POOLS: dict[str, tuple[str, ...]] = {
    "det": _DETERMINERS, "adj": ADJECTIVES, "noun": NOUNS, "verb": VERBS, "intr": INTRANSITIVE,
    "adv": ADVERBS, "prep": PREPOSITIONS, "opener": OPENERS,
}

# Values hidden as "special magic words"; none of them occurs in the essay vocabulary above.
VALUE_WORDS = (
    "saxophone", "marzipan", "kaleidoscope", "trombone", "avalanche", "porcupine", "telescope", "periscope",
    "zeppelin", "gondola", "harpsichord", "pomegranate", "chameleon", "quicksilver", "labyrinth", "tambourine",
    "mongoose", "boomerang", "xylophone", "catapult", "dragonfly", "flamingo", "accordion", "igloo", "jellyfish",
    "kangaroo", "lighthouse", "mandolin", "nightingale", "origami", "pelican", "rhubarb", "scarecrow", "tornado",
    "umbrella", "volcano", "walrus", "yodel", "zucchini", "armadillo", "bagpipe", "cinnamon", "dandelion",
    "eucalyptus", "firefly", "gargoyle", "hedgehog", "iguana", "juniper", "kiwi", "lemonade", "meteorite",
    "nutmeg", "octopus", "parsnip", "quokka", "raccoon", "sapphire", "tarantula", "unicycle", "vanilla",
)
_KEY_ADJECTIVES = (
    "fearless", "crimson", "wobbly", "silky", "brave", "jolly", "mellow", "fuzzy", "nimble", "rowdy",
    "sleepy", "spotty", "tidy", "zesty", "grumpy", "breezy", "chunky", "dapper", "feisty", "gusty",
)
_KEY_NOUNS = (
    "otter", "walnut", "teapot", "falcon", "pretzel", "cactus", "badger", "muffin", "beacon", "pebble",
    "thimble", "turnip", "goblet", "biscuit", "sparrow", "trumpet", "lobster", "pumpkin", "marble", "raven",
)
_SYLLABLE_START = "bdfgklmnprstvz"
_SYLLABLE_VOWEL = "aeiou"
_SYLLABLE_END = ("", "", "n", "r", "x", "k")


def haystack_lines(kind: HaystackKind, seed: int) -> Iterator[str]:
    """The endless lines of one haystack kind: `repeat` (one sentence), `logs` (the shipping log), `essay`."""
    if kind == "repeat":
        return itertools.repeat(REPEAT_LINE)
    if kind == "logs":
        return filler_lines(seed)
    if kind == "essay":
        return essay_lines(seed)
    raise ValueError(f"unknown haystack kind {kind!r}")


def essay_lines(seed: int) -> Iterator[str]:
    """Endless seeded essay-like prose, one paragraph of two to five sentences per line, without digits."""
    rng = random.Random(f"essay:{seed}")
    while True:
        yield " ".join(essay_sentence(rng) for _ in range(rng.randint(2, 5)))


def essay_sentence(rng: random.Random) -> str:
    """One grammatical sentence drawn from the essay vocabulary."""
    out: list[str] = []
    for literal, field, _, _ in string.Formatter().parse(rng.choice(_TEMPLATES)):
        out.append(literal)
        if field is not None:
            out.append(rng.choice(_POOLS[field.lower()]))
    for i, piece in enumerate(out):  # "a" before a vowel sound reads as "an"; the next piece is " " then the word
        if piece == "a" and i + 2 < len(out) and out[i + 2][:1] in "aeiou":
            out[i] = "an"
    text = "".join(out)
    return text[0].upper() + text[1:]


def make_keys(rng: random.Random, count: int) -> list[str]:
    """`count` distinct keys such as "fearless-otter"."""
    pairs = rng.sample([(a, n) for a in _KEY_ADJECTIVES for n in _KEY_NOUNS], count)
    return [f"{a}-{n}" for a, n in pairs]


def similar_key(key: str, rng: random.Random, avoid: set[str]) -> str:
    """A key sharing one of `key`'s two words, for near-miss sentences; never one in `avoid`."""
    adjective, noun = key.split("-")
    options = [f"{adjective}-{n}" for n in _KEY_NOUNS] + [f"{a}-{noun}" for a in _KEY_ADJECTIVES]
    return rng.choice([k for k in options if k != key and k not in avoid])


def make_values(kind: ValueKind, rng: random.Random, count: int) -> list[str]:
    """`count` distinct values of one kind: seven-digit numbers, words from VALUE_WORDS, or UUIDs."""
    if kind == "number":
        return [str(n) for n in rng.sample(range(1_000_000, 10_000_000), count)]
    if kind == "word":
        return rng.sample(VALUE_WORDS, count)
    if kind == "uuid":
        return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]
    raise ValueError(f"unknown value kind {kind!r}")


def value_pattern(kind: ValueKind) -> str:
    """A regex matching one complete value of the kind (the tasks add word boundaries)."""
    if kind == "number":
        return r"\d{7}"
    if kind == "word":
        return "(?i:" + "|".join(VALUE_WORDS) + ")"
    return r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def coded_words(rng: random.Random, count: int) -> list[str]:
    """`count` distinct pronounceable nonsense words ("zorvak"), for counting tasks no prior can answer."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        word = "".join(
            rng.choice(_SYLLABLE_START) + rng.choice(_SYLLABLE_VOWEL) + rng.choice(_SYLLABLE_END)
            for _ in range(rng.randint(2, 3))
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words
