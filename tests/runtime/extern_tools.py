"""Python functions that test programs bind with `extern fn`."""

import asyncio


def word_count(text: str) -> int:
    return len(text.split())


async def shout(text: str) -> str:
    await asyncio.sleep(0)
    return text.upper()


def stats(text: str) -> dict:
    return {"words": len(text.split()), "chars": len(text)}


def broken(text: str) -> int:
    return "not a number"  # type: ignore[return-value]


def named_single(text: str) -> dict:
    return {"length": len(text)}


def numbers(n: int) -> list[str]:
    return [str(i) for i in range(n)]
