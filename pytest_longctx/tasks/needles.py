"""The needle and the filler of the haystack families: seeded needles (a vault's override code), and an endless
seeded shipping log to hide them in; the instruction texts the prompts open with."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

SHIPPING_INSTRUCTIONS = (
    "Below is a warehouse shipping log. Read it carefully, then answer the question that follows it."
)


DOCUMENT_INSTRUCTIONS = "Below is a document. Read it carefully, then answer the question that follows it."


NO_TEMPLATE_SUFFIX = "\nAnswer:"


TOLERANCE = 0.01  # the count is exact whenever trimming can hit it; it is never off by more than this fraction


_CODE_WORDS = (
    "KESTREL", "OSPREY", "HERON", "FALCON", "MERLIN", "PLOVER", "SHRIKE", "TANAGER", "WARBLER", "CONDOR",
    "PEREGRINE", "KINGFISHER", "CORMORANT", "BITTERN", "AVOCET", "CURLEW", "DUNLIN", "GANNET", "HOOPOE",
    "LAPWING", "NIGHTJAR", "ORIOLE", "PIPIT", "REDSTART", "SANDERLING", "TURNSTONE", "WAGTAIL", "WHIMBREL",
    "BASALT", "COBALT", "GRANITE", "OBSIDIAN", "QUARTZ", "TOPAZ", "GARNET", "JASPER", "ONYX", "FELDSPAR",
)


_VAULTS = (
    "cold-storage vault", "east wing vault", "records vault", "bonded goods vault", "pharmacy vault",
    "archive vault", "north yard vault", "customs vault",
)


_CARRIERS = (
    "Northwind Freight", "Bluewater Logistics", "Redline Haulage", "Summit Carriers", "Prairie Express",
    "Harbor Line Transport", "Ironhorse Trucking", "Coastal Cargo", "Granite State Movers", "Lakeshore Freight",
    "Pioneer Distribution", "Silverline Logistics", "Keystone Transit", "Evergreen Haulers",
)


_CITIES = (
    "Denver", "Omaha", "Tulsa", "Memphis", "Columbus", "Spokane", "Boise", "Reno", "Fresno", "Wichita",
    "Toledo", "Albany", "Savannah", "Richmond", "Louisville", "Madison", "Duluth", "Lubbock", "Tacoma",
    "Akron", "Raleigh", "Dayton", "Provo", "Laredo",
)


_GOODS = (
    "canned tomatoes", "bicycle parts", "printer paper", "bottled water", "garden hoses", "ceramic tiles",
    "frozen peas", "laptop batteries", "dog food", "office chairs", "motor oil", "cotton towels",
)


_STATUSES = (
    "loaded", "unloaded", "departed", "arrived", "held for inspection", "delayed by weather",
    "rescheduled", "staged for pickup", "cross-docked", "weighed and sealed",
)


@dataclass(frozen=True)
class Needle:
    """The sentence hidden in the haystack, the question asked after it, and the string the answer must hold."""

    text: str
    question: str
    answer: str


def make_needle(seed: int) -> Needle:
    """A seeded needle such as "The override code for the cold-storage vault is KESTREL-4827."."""
    rng = random.Random(f"needle:{seed}")
    vault = rng.choice(_VAULTS)
    answer = f"{rng.choice(_CODE_WORDS)}-{rng.randint(1000, 9999)}"
    return Needle(
        text=f"The override code for the {vault} is {answer}.",
        question=f"What is the override code for the {vault}? Reply with the code only.",
        answer=answer,
    )


def filler_lines(seed: int) -> Iterator[str]:
    """An endless, seeded warehouse shipping log, one event per line (the 2024 dates wrap round after a year)."""
    rng = random.Random(f"filler:{seed}")
    minute = rng.randint(0, 365 * 24 * 60)
    while True:
        minute += rng.randint(1, 37)
        day, rest = divmod(minute, 24 * 60)
        month, dom = divmod(day % 336, 28)
        stamp = f"2024-{month + 1:02d}-{dom + 1:02d} {rest // 60:02d}:{rest % 60:02d}"
        origin, destination = rng.sample(_CITIES, 2)
        shipment = f"SH-{rng.randint(10000, 99999)}"
        dock, carrier, status = rng.randint(1, 24), rng.choice(_CARRIERS), rng.choice(_STATUSES)
        pallets = rng.randint(1, 40)
        shape = rng.random()
        if shape < 0.6:
            yield (
                f"{stamp} shipment {shipment} dock {dock} carrier {carrier} route {origin}-{destination} "
                f"{pallets} pallets {status}"
            )
        elif shape < 0.85:
            yield (
                f"{stamp} shipment {shipment} of {rng.choice(_GOODS)} ({pallets} pallets, "
                f"{rng.randint(300, 19000)} kg) {status} at dock {dock} by {carrier}"
            )
        else:
            trailer = f"TR-{rng.randint(100, 999)}"
            yield f"{stamp} dock {dock} inspection passed for {shipment}, trailer {trailer} to {destination}"


def make_needles(count: int, seed: int = 0) -> tuple[Needle, ...]:
    """`count` seeded needles about distinct vaults (at most one per vault), so each question has one answer."""
    if not 1 <= count <= len(_VAULTS):
        raise ValueError(f"count must be between 1 and {len(_VAULTS)}, got {count!r}")
    rng = random.Random(f"needles:{seed}")
    needles = []
    for vault in rng.sample(_VAULTS, count):
        answer = f"{rng.choice(_CODE_WORDS)}-{rng.randint(1000, 9999)}"
        needles.append(Needle(
            text=f"The override code for the {vault} is {answer}.",
            question=f"What is the override code for the {vault}? Reply with the code only.",
            answer=answer,
        ))
    return tuple(needles)
