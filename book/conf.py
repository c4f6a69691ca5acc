"""Sphinx configuration of lmlab's book, which book/build.py builds from the committed, executed chapters.

Why Sphinx with MyST-NB and sphinx-book-theme (the engine of Jupyter Book 1): it reads the saved outputs without
executing anything; it turns `$...$` into math at build time and renders it with a MathJax that ships inside the
site (sphinx-mathjax-offline); its search index is a file of the site; its Python domain knows every lmlab function
the reference pages document, so a chapter's mention of one becomes a link. Jupyter Book 2 (mystmd) downloads its
site theme when a site is first built, which an offline course machine cannot do.

What this file adds to every chapter page (when Sphinx resolves the page, so every function and chapter is known):
- a "run it live" box under the title: the notebook to open in JupyterLab, and links to the lmlab functions the
  chapter imports;
- links from the prose: an lmlab function named in code font (its full name, or a name the chapter imports) goes
  to its reference entry; "chapter 03" goes to chapter 03.
Docstrings are shown as their authors wrote them for `help()`, in plain text.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from docutils import nodes

sys.path.insert(0, str(Path(__file__).resolve().parent))  # book/slides.py: a chapter's run time

from slides import read, run_times  # noqa: E402

project = "lmlab: the Millisecond LM Lab"
author = "lmlab"
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx-mathjax-offline"]
myst_enable_extensions = ["dollarmath", "amsmath"]
nb_execution_mode = "off"  # the saved outputs are the book
nb_ipywidgets_js: dict = {}  # no widget manager from a CDN: book/build.py shows each panel's saved state instead
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
autodoc_member_order = "bysource"
html_theme = "sphinx_book_theme"
html_title = "lmlab"
html_favicon = "favicon.svg"
html_static_path = ["static"]
html_css_files = ["lmlab.css"]
html_context = {"default_mode": "light"}
html_copy_source = False  # the notebooks are in the repository; the site need not carry them twice
html_theme_options = {"show_toc_level": 2, "use_download_button": False}
CHAPTER = re.compile(r"\b([Cc]hapters?) ((?:\d\d(?:, | and | or |–|-))*\d\d)\b")


def _docstring_as_written(app, what, name, obj, options, lines):
    """Show each docstring as its author wrote it (plain text for `help()`), not parsed as reStructuredText."""
    if lines:
        lines[:] = ["::", "", *("    " + line for line in lines), ""]


def _imports(notebook: dict) -> dict[str, str]:
    """The lmlab names a notebook's code imports, each mapped to the full name it is documented under."""
    import importlib

    found = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmlab"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    thing = getattr(module, alias.name, None)
                    home = getattr(thing, "__module__", node.module) if callable(thing) else node.module
                    found[alias.asname or alias.name] = f"{home}.{alias.name}"
    return found


def _targets(app) -> dict[str, tuple[str, str]]:
    """Every documented Python object: full name → (page, anchor)."""
    return {name: (entry.docname, entry.node_id) for name, entry in app.env.domains["py"].objects.items()}


def _link(app, docname: str, target: str, anchor: str, child: nodes.Node) -> nodes.reference:
    uri = app.builder.get_relative_uri(docname, target) + (f"#{anchor}" if anchor else "")
    reference = nodes.reference("", "", internal=True, refuri=uri)
    reference += child
    return reference


def _function_links(app, doctree, docname, targets, imported) -> None:
    for literal in list(doctree.findall(nodes.literal)):
        if isinstance(literal.parent, nodes.reference):
            continue
        text = literal.astext().removesuffix("()")
        full = text if text.startswith("lmlab.") else imported.get(text, "")
        if full in targets:
            literal.replace_self(_link(app, docname, *targets[full], literal.deepcopy()))


def _chapter_pieces(app, docname, text: str, chapters: dict[str, str]) -> list[nodes.Node]:
    """``text`` cut into plain text and links: "chapter 03" links whole, each number of "chapters 06 and 07" links."""
    pieces: list[nodes.Node] = []
    last = 0
    for match in CHAPTER.finditer(text):
        numbers = match.group(2)
        if len(numbers) == 2:
            if chapters.get(numbers, docname) != docname:
                pieces += [nodes.Text(text[last:match.start()]),
                           _link(app, docname, chapters[numbers], "", nodes.Text(match.group(0)))]
                last = match.end()
            continue
        pieces.append(nodes.Text(text[last:match.start(2)]))
        for i, part in enumerate(re.split(r"(\d\d)", numbers)):
            if i % 2 and chapters.get(part, docname) != docname:
                pieces.append(_link(app, docname, chapters[part], "", nodes.Text(part)))
            elif part:
                pieces.append(nodes.Text(part))
        last = match.end(2)
    return [*pieces, nodes.Text(text[last:])]


def _chapter_links(app, doctree, docname, chapters: dict[str, str]) -> None:
    for text in list(doctree.findall(nodes.Text)):
        if isinstance(text.parent, nodes.paragraph | nodes.emphasis | nodes.strong) and CHAPTER.search(text):
            text.parent.replace(text, _chapter_pieces(app, docname, str(text), chapters))


def _run_live_box(app, docname, notebook, targets, imported) -> nodes.Element:
    box = nodes.admonition(classes=["lmlab-run-live"])
    box += nodes.title(text="Run this chapter live")
    steps = nodes.paragraph()
    steps += nodes.Text("Clone the repository and run ")
    steps += nodes.literal(text="make lab")
    steps += nodes.Text(" (it sets everything up and opens JupyterLab), then open ")
    steps += nodes.literal(text=f"notebooks/{docname}.ipynb")
    seconds = run_times(notebook, ()).chapter_s
    steps += nodes.Text(f" and choose Run ▸ Run All Cells. This page shows the outputs saved by the last such run, "
                        f"which took {seconds:.0f} s on the machine that made it (the kernel's start not included); "
                        "panels answer only in the running notebook. Cells marked “live demo” are the ones an "
                        "instructor re-runs in class (")
    steps += _link(app, docname, "presenting", "", nodes.Text("presenting a chapter"))
    steps += nodes.Text(").")
    box += steps
    functions = sorted({full for full in imported.values() if full in targets}, key=lambda f: f.rsplit(".", 1)[1])
    if functions:
        uses = nodes.paragraph()
        uses += nodes.Text("lmlab functions this chapter calls: ")
        for i, full in enumerate(functions):
            uses += nodes.Text(", " if i else "")
            uses += _link(app, docname, *targets[full], nodes.literal(text=full.rsplit(".", 1)[1]))
        box += uses
    return box


def _resolve_chapter(app, doctree, docname) -> None:
    chapters = {name[:2]: name for name in app.env.found_docs if re.fullmatch(r"\d\d_\w+", name)}
    if docname not in chapters.values():
        return
    notebook = read(Path(app.env.doc2path(docname)))
    targets, imported = _targets(app), _imports(notebook)
    _function_links(app, doctree, docname, targets, imported)
    _chapter_links(app, doctree, docname, chapters)
    title = next(iter(doctree.findall(nodes.title)))
    section = title.parent
    section.insert(section.index(title) + 1, _run_live_box(app, docname, notebook, targets, imported))


def setup(app):
    app.connect("autodoc-process-docstring", _docstring_as_written)
    app.connect("doctree-resolved", _resolve_chapter)
