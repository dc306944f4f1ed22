"""Regenerate ``corpus.txt``: simple English sentences from a small grammar.

The demo pretrains its tiny base model on this text, so the base has seen
every word the demo tasks use. Run ``python make_corpus.py`` in this folder;
the output is deterministic (seed 0).
"""

from __future__ import annotations

import random
from pathlib import Path

NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo",
         "Mia", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tina", "Victor"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "goat", "duck", "mouse", "rabbit", "fox",
           "bear", "wolf", "frog", "lion", "tiger", "owl", "hen", "pig"]
THINGS = ["book", "apple", "ball", "box", "cup", "hat", "key", "lamp", "map", "pen", "ring", "rope", "shoe",
          "song", "stone", "table", "chair", "door", "bread", "cake", "coin", "kite", "letter", "plate", "clock"]
PLACES = ["park", "garden", "river", "market", "school", "forest", "house", "kitchen", "village", "field",
          "beach", "hill", "lake", "road", "farm", "city", "shop", "room", "bridge", "island"]
ADJECTIVES = ["big", "small", "red", "blue", "green", "old", "new", "happy", "quiet", "loud", "warm", "cold",
              "soft", "fast", "slow", "bright", "dark", "tall", "short", "clean"]
VERBS = [("see", "sees", "saw"), ("like", "likes", "liked"), ("find", "finds", "found"), ("take", "takes", "took"),
         ("give", "gives", "gave"), ("make", "makes", "made"), ("want", "wants", "wanted"), ("hold", "holds", "held"),
         ("paint", "paints", "painted"), ("carry", "carries", "carried"), ("open", "opens", "opened"),
         ("clean", "cleans", "cleaned"), ("bring", "brings", "brought"), ("read", "reads", "read"),
         ("keep", "keeps", "kept"), ("sell", "sells", "sold"), ("buy", "buys", "bought"), ("draw", "draws", "drew")]
MOVES = [("walk", "walks", "walked"), ("run", "runs", "ran"), ("go", "goes", "went"), ("swim", "swims", "swam"),
         ("jump", "jumps", "jumped"), ("sing", "sings", "sang"), ("sleep", "sleeps", "slept"),
         ("play", "plays", "played")]
TIMES = ["today", "yesterday", "in the morning", "at night", "every day", "after lunch", "on Sunday", "in the spring"]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "brown", "pink"]


def sentence(rng: random.Random) -> str:
    def the() -> str:
        return rng.choice(["the", "a", "my", "her", "his", "our"])

    def noun() -> str:
        return rng.choice(ANIMALS + THINGS)

    name, place, adj = rng.choice(NAMES), rng.choice(PLACES), rng.choice(ADJECTIVES)
    verb, move, time = rng.choice(VERBS), rng.choice(MOVES), rng.choice(TIMES)
    patterns = [
        lambda: f"{name} {verb[1]} {the()} {adj} {noun()}.",
        lambda: f"{name} {verb[2]} {the()} {noun()} {time}.",
        lambda: f"The {rng.choice(ANIMALS)} {move[1]} to the {place}.",
        lambda: f"{name} and {rng.choice(NAMES)} {move[2]} to the {place} {time}.",
        lambda: f"The {noun()} is {adj}.",
        lambda: f"The {noun()} in the {place} is {rng.choice(COLORS)}.",
        lambda: f"{name} has a {adj} {rng.choice(ANIMALS)} and a {rng.choice(COLORS)} {rng.choice(THINGS)}.",
        lambda: f"Where is the {noun()}? It is in the {place}.",
        lambda: f"{name} can {move[0]}, but the {rng.choice(ANIMALS)} cannot.",
        lambda: f"I {verb[0]} the {adj} {noun()} {time}.",
        lambda: f"We {move[0]} to the {place} when it is {rng.choice(['warm', 'cold', 'dark', 'quiet'])}.",
        lambda: f"{name} said: the {noun()} is {adj} and the {noun()} is {rng.choice(ADJECTIVES)}.",
    ]
    return rng.choice(patterns)()


def main(path: Path | None = None, n: int = 4000) -> None:
    path = path or Path(__file__).with_name("corpus.txt")
    rng = random.Random(0)
    lines: list[str] = []
    while len(lines) < n:
        lines.append(" ".join(sentence(rng) for _ in range(rng.randint(1, 3))))
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
