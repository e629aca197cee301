from pathlib import Path


def train(word: str) -> str:
    # The trainer sees the managed weights too.
    return word + " " + Path("/weights/stored/stored.txt").read_text()
