"""A loop's carried variable may be given its next value inside an `if` of the body.

`for x in xs with best = "" { if good(x) { best = x } }` reads as it would in Python: the
branches that assign `best` give its next value, the others keep the current one. The
checker and lowering know one way to give a next value, an assignment at the top of the
body, so this rewrite (run on every flow right after parsing) turns the first form into
the second:

    if good(x) { best (next) = x } else { best (next) = best }
    best = best (next)

`best (next)` is a name no program can write (it has a space), so it never clashes; an
if nested in a branch gives `best (next 2)`, read by its enclosing if's branch.
"""

from __future__ import annotations

from llmflow.compiler import ast

NEXT = " (next"


def next_name(name: str, depth: int) -> str:
    """The name of a carried variable's next value given by an if `depth` ifs deep."""
    return f"{name}{NEXT}{'' if depth == 1 else f' {depth}'})"


def shown(name: str) -> str:
    """A name as the program wrote it: `best`, not the rewrite's `best (next)`."""
    return name.partition(NEXT)[0]


def lift_branch_nexts(flow: ast.FlowDecl) -> ast.FlowDecl:
    """The flow with every loop body that assigns a carried variable in an `if`
    rewritten (the AST is immutable: changed nodes are copies). Idempotent."""
    body = _walk(flow.body, frozenset(), 1)
    return flow if body is flow.body else flow.model_copy(update={"body": body})


def _walk(stmts: list[ast.Stmt], carried: frozenset[str], depth: int) -> list[ast.Stmt]:
    """`stmts` rewritten, or `stmts` itself when nothing in it changes."""
    out: list[ast.Stmt] = []
    changed = False
    for stmt in stmts:
        new: list[ast.Stmt] = [stmt]
        if isinstance(stmt, ast.Loop):
            body = _walk(stmt.body, frozenset(b.name.name for b in stmt.carried), 1)
            if body is not stmt.body:
                new = [stmt.model_copy(update={"body": body})]
        elif isinstance(stmt, ast.If):
            new = _lift(stmt, carried, depth)
        changed = changed or len(new) != 1 or new[0] is not stmt
        out.extend(new)
    return out if changed else stmts


def _lift(stmt: ast.If, carried: frozenset[str], depth: int) -> list[ast.Stmt]:
    """An if (its else-if chain walked without recursion) and, after it, one assignment
    of each carried variable its branches give a next value."""
    links: list[ast.If] = [stmt]
    while len(links[-1].orelse) == 1 and isinstance(links[-1].orelse[0], ast.If):
        links.append(links[-1].orelse[0])
    branches = [_walk(link.then, carried, depth + 1) for link in links]
    branches.append(_walk(links[-1].orelse, carried, depth + 1))
    first: dict[str, ast.Ident] = {}
    for branch in branches:
        for target in _targets(branch):
            if target.name in carried:
                first.setdefault(target.name, target)
    if not first:
        if all(new is old.then for new, old in zip(branches, links, strict=False)) and (
            branches[-1] is links[-1].orelse
        ):
            return [stmt]
        return [_rebuild(links, branches)]
    suffixed = {name: next_name(name, depth) for name in first}
    branches = [_renamed(branch, suffixed, stmt.span) for branch in branches]
    after: list[ast.Stmt] = [
        ast.Assign(
            span=target.span,
            targets=[ast.Ident(name=name, span=target.span)],
            value=ast.Name(id=suffixed[name], span=target.span),
        )
        for name, target in first.items()
    ]
    return [_rebuild(links, branches), *after]


def _renamed(branch: list[ast.Stmt], names: dict[str, str], span: ast.Span) -> list[ast.Stmt]:
    """A branch whose assignments of `names` (name → its next value's name) give their
    next values, and which keeps the current value of those it does not assign."""
    out: list[ast.Stmt] = []
    given: set[str] = set()
    for s in branch:
        if isinstance(s, ast.Assign) and any(t.name in names for t in s.targets):
            targets = [
                t.model_copy(update={"name": names[t.name]}) if t.name in names else t
                for t in s.targets
            ]
            given.update(t.name for t in s.targets)
            s = s.model_copy(update={"targets": targets})
        out.append(s)
    for name, renamed in names.items():
        if name not in given:
            out.append(
                ast.Assign(
                    span=span,
                    targets=[ast.Ident(name=renamed, span=span)],
                    value=ast.Name(id=name, span=span),
                )
            )
    return out


def _rebuild(links: list[ast.If], branches: list[list[ast.Stmt]]) -> ast.If:
    """The chain with new branches, built from its last link up (no recursion)."""
    orelse: list[ast.Stmt] = branches[-1]
    for link, then in zip(reversed(links), reversed(branches[:-1]), strict=True):
        orelse = [link.model_copy(update={"then": then, "orelse": orelse})]
    rebuilt = orelse[0]
    assert isinstance(rebuilt, ast.If)
    return rebuilt


def _targets(stmts: list[ast.Stmt]) -> list[ast.Ident]:
    return [t for s in stmts if isinstance(s, ast.Assign) for t in s.targets]
