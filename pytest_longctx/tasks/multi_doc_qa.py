"""Multi-document QA: synthetic retrieved documents with relevance scores, one holding the answer."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from .corpus import essay_sentence
from .family import Family, Option
from .haystack import Needle, build_haystack
from .prompt import Document, TaskPrompt, token_span

Arrange = Callable[[list[Document]], list[Document]]

HEADER = "Search results:"
YEAR_PATTERN = r"1[7-9]\d\d"
_PLACES = (
    "Marrowby", "Corvale", "Ashgrove", "Thistlewick", "Brindlemoor", "Quenford", "Halloway", "Dunmere",
    "Pellbrook", "Westhollow", "Larkspire", "Oakhaven", "Fennick", "Greywater", "Rookfield", "Saltmarsh",
)
_KINDS = (
    "Glassworks", "Shipyard", "Observatory", "Brewery", "Foundry", "Printing House", "Railway Company",
    "Lending Library", "Orchestra", "Botanical Garden", "Clockmakers' Guild", "Rowing Club",
)
_TITLES = ("The {entity}", "History of the {entity}", "{entity}: a short history", "Notes on the {entity}")
_PARAGRAPH = 3
_BUDGET_SHARE = 0.99  # documents are sized a little under their fair share, so every one fits before the padding


def build_multi_doc_qa(
    tokenizer: Any, *, length: int, depth: float, seed: int, documents: int = 10, near_misses: int = 2,
    arrange: Arrange | None = None,
) -> TaskPrompt:
    """`documents` documents about fictional institutions; the question asks one's founding year.

    Before `arrange`, the answer document sits at position round(depth * (documents - 1)) and the rest are
    in seeded order. `near_misses` documents share a word of the answer's institution (its place or its
    kind) and have relevance as high as the answer's, sometimes higher; the others score low. `arrange`
    (a prompt-level change such as edge packing) may reorder the documents before rendering; the prompt is
    still fitted to `length` tokens by padding the last rendered document and cutting the padding back;
    each document's founding sentence comes first.

    Returns:
        A TaskPrompt whose `documents` are in rendered order, with the text as rendered (the last cut).
    """
    if near_misses > documents - 1:
        raise ValueError(f"near_misses ({near_misses}) must be fewer than documents ({documents})")
    rng = random.Random(f"multi_doc_qa:{seed}")
    place, kind = rng.choice(_PLACES), rng.choice(_KINDS)
    entities = [f"{place} {kind}"] + _near_entities(rng, place, kind, near_misses)
    entities += _other_entities(rng, set(entities), documents - len(entities), place, kind)
    years = [str(y) for y in rng.sample(range(1700, 1990), documents)]
    relevance = [rng.uniform(0.72, 0.9)] + [rng.uniform(0.7, 0.95) for _ in range(near_misses)]
    relevance += [rng.uniform(0.05, 0.5) for _ in range(documents - 1 - near_misses)]
    question = f"In what year was the {entities[0]} founded? Reply with the year only."
    instructions = (
        "Write a high-quality answer for the given question using only the provided search results "
        "(some of which might be irrelevant)."
    )
    budget = _document_budget(tokenizer, length, documents, instructions, question)
    docs = []
    for i, (entity, year, r) in enumerate(zip(entities, years, relevance, strict=True)):
        title = rng.choice(_TITLES).format(entity=entity)
        body = _body(tokenizer, f"The {entity} was founded in {year}.", budget, random.Random(f"multi_doc_qa:{seed}:{i}"))
        docs.append(Document(title=title, text=body, relevance=round(r, 3), holds_answer=i == 0))
    others = docs[1:]
    rng.shuffle(others)
    at = round(depth * (documents - 1))
    order = others[:at] + [docs[0]] + others[at:]
    if arrange is not None:
        order = list(arrange(list(order)))
        if sorted(map(id, order)) != sorted(map(id, docs)):
            raise ValueError("arrange must return the same documents, reordered")
    lines = [line for i, doc in enumerate(order, 1) for line in _lines(i, doc)]
    # The last document is padded well past its share; the fitting cuts it back to the exact length.
    pad = random.Random(f"multi_doc_qa:{seed}:pad")
    lines += _paragraphs([essay_sentence(pad) for _ in range(length // 60 + 8)])
    haystack = build_haystack(
        tokenizer, length=length, depth=0.0, seed=seed, needle=Needle(HEADER, question, HEADER), filler=lines,
        instructions=instructions,
    )
    text = haystack.prompt_text
    body_end = text.index("\n\n" + question)
    heads = [text.find("\n" + _lines(i, doc)[0] + "\n") for i, doc in enumerate(order, 1)]
    if min(heads) < 0:
        raise ValueError(f"length {length} is too short for {documents} documents; use a longer length or fewer documents")
    rendered, span = [], (0, 0)
    for i, (doc, start) in enumerate(zip(order, heads, strict=True)):
        end = heads[i + 1] if i + 1 < len(heads) else body_end
        body = text[start + 1 : end].partition("\n")[2]
        rendered.append(Document(doc.title, body, doc.relevance, doc.holds_answer))
        if doc.holds_answer:
            span = token_span(tokenizer, text, start + 1, end)
    answer = years[0]
    if text.count(answer) != 1 or answer not in next(d.text for d in rendered if d.holds_answer):
        raise ValueError(f"length {length} is too short to keep the answer document whole; use a longer length")
    position = next(i for i, d in enumerate(rendered) if d.holds_answer)
    return TaskPrompt(
        family="multi_doc_qa", prompt_text=text, token_ids=haystack.token_ids, length=length, depth=float(depth),
        seed=seed, question=question, answers=(answer,), distractors=tuple(years[1:]), evidence_spans=(span,),
        scoring="all", value_pattern=YEAR_PATTERN, actual_depth=position / (documents - 1) if documents > 1 else 0.0,
        documents=tuple(rendered),
    )


def _lines(number: int, doc: Document) -> list[str]:
    """A document as prompt lines: its numbered title, then its paragraphs."""
    return [f"Document [{number}] (Title: {doc.title})", *doc.text.split("\n")]


def _paragraphs(sentences: list[str]) -> list[str]:
    """Sentences in paragraphs of three, so the fitting cuts (and tokenizes prefixes of) short lines only."""
    return [" ".join(sentences[i : i + _PARAGRAPH]) for i in range(0, len(sentences), _PARAGRAPH)]


def _near_entities(rng: random.Random, place: str, kind: str, count: int) -> list[str]:
    """Institutions sharing the place or the kind of the asked one, alternately."""
    places = rng.sample([p for p in _PLACES if p != place], count)
    kinds = rng.sample([k for k in _KINDS if k != kind], count)
    return [f"{place} {kinds[i]}" if i % 2 == 0 else f"{places[i]} {kind}" for i in range(count)]


def _other_entities(rng: random.Random, taken: set[str], count: int, place: str, kind: str) -> list[str]:
    """Institutions sharing no word with the asked one."""
    pool = [f"{p} {k}" for p in _PLACES for k in _KINDS if p != place and k != kind and f"{p} {k}" not in taken]
    return rng.sample(pool, count)


def _document_budget(tokenizer: Any, length: int, documents: int, instructions: str, question: str) -> int:
    """Tokens for each document: its share of what the framing (template, instructions, question) leaves."""
    content = f"{instructions}\n\n{HEADER}\n\n{question}"
    if getattr(tokenizer, "chat_template", None) is not None:
        content = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    framing = len(tokenizer(content, add_special_tokens=False)["input_ids"])
    return int(_BUDGET_SHARE * (length - framing) / documents)


def _body(tokenizer: Any, fact: str, budget: int, rng: random.Random) -> str:
    """The founding sentence, then essay sentences in paragraphs, to about `budget` tokens with a ~16-token title."""
    sentences = [fact]
    spent = 16 + len(tokenizer(fact, add_special_tokens=False)["input_ids"]) + 2  # the two lines' newlines
    while True:
        sentence = essay_sentence(rng)
        cost = len(tokenizer(" " + sentence, add_special_tokens=False)["input_ids"]) + (len(sentences) % _PARAGRAPH == 0)
        if spent + cost > budget:
            return "\n".join(_paragraphs(sentences))
        sentences.append(sentence)
        spent += cost


FAMILIES = (
    Family(
        "multi_doc_qa", "documents with relevance scores; one holds the founding year asked for",
        (Option("documents", 10, low=2, high=60), Option("near_misses", 2, low=0, high=10)),
        build_multi_doc_qa, arranges=True,
    ),
)
