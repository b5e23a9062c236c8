"""Griffe extension for the docs: Sphinx cross-reference roles in docstrings become links.

layerknn's numpydoc docstrings name other objects with Sphinx roles (``:func:`layerknn.compare```,
``:meth:`save```, ``:mod:`layerknn.calibration```), which read well in ``help()`` and in the
source. mkdocstrings renders docstrings as Markdown, where a role would show as literal text;
this extension rewrites each role into an *optional* mkdocs-autorefs reference: a link when the
target is documented on the site, plain code otherwise (never a broken link). A short name is
looked up the way a reader would: in the object's class, then its module, then ``layerknn``,
then in whichever single module of the package defines it.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(func|class|meth|mod|data|attr|exc|obj):`(~?)([A-Za-z_][\w.]*)(?:\(\))?`")


def _resolve(name: str, obj: griffe.Object, collection, role: str) -> str:
    """Full path of the object ``name`` refers to from inside ``obj`` (``name`` itself if not found).

    ``layerknn.knn`` is both a module and the function it defines (re-exported by the package);
    any role but ``:mod:`` means the function, ``layerknn.knn.knn``.
    """
    scopes = []
    scope = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:
        scopes.append(scope.path)
        scope = scope.parent
    for prefix in scopes + ["layerknn"]:
        for candidate in (f"{prefix}.{name}", name):
            try:
                found = collection[candidate]
            except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
            last = candidate.rsplit(".", 1)[-1]
            if role != "mod" and found.is_module and last in found.members:
                return f"{candidate}.{last}"
            return candidate
    if "." not in name:  # a bare name defined in exactly one module of the package
        package = collection[obj.path.split(".")[0]]
        owners = [m.path for m in package.modules.values() if name in m.members and not m.members[name].is_alias]
        if len(owners) == 1:
            return f"{owners[0]}.{name}"
    return name


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the package into an optional autoref."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        todo = [pkg]
        while todo:
            obj = todo.pop()
            todo.extend(member for member in obj.members.values() if not member.is_alias)
            if obj.docstring is None:
                continue

            def link(match: re.Match, obj=obj) -> str:
                role, short, name = match.group(1), match.group(2), match.group(3)
                title = name.rsplit(".", 1)[-1] if short else name
                target = _resolve(name, obj, loader.modules_collection, role)
                return f'<autoref identifier="{target}" optional>`{title}`</autoref>'

            obj.docstring.value = _ROLE.sub(link, obj.docstring.value)
