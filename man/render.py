#!/usr/bin/env python3
"""Render the manual pages of man/*.man.txt to roff (man(7) macros).

The pages are written in a small line-based markup so that they read as
plain text in the tree, and the usage of every command comes from the
program itself, never from a copy:

  % NAME SECTION one-line title    first line: the .TH header
  # HEADING                        a section (.SH)
  ## Heading                       a subsection (.SS)
  : TERM                           a tagged paragraph: TERM, then the lines
                                   after it up to a blank line, indented
  - text                           a bullet item
      text (4 spaces or more)      verbatim lines
  @help WORD...                    the output of `thinstack WORD... --help`,
                                   verbatim; the command is marked as covered
  @all-commands                    fails the build unless every command that
                                   `thinstack --help` lists has had an @help
  @types                           every layer type and its parameters, from
                                   `thinstack types --json`
  `code`  **bold**  *italic*       inline fonts

Anything else is running text; a blank line ends a paragraph. Only the
Python standard library is used.
"""
import json
import os
import re
import subprocess
import sys


def esc(text):
    """Escape text for roff: backslashes, hyphens (so options stay ASCII
    minus signs that can be copied and searched), and leading dots."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def inline(text):
    parts = re.split(r"(`[^`]+`|\*\*[^*]+\*\*|\*[A-Za-z][^*]*\*)", text)
    out = []
    for p in parts:
        if p.startswith("`") and p.endswith("`") and len(p) > 1:
            out.append("\\fB" + esc(p[1:-1]) + "\\fR")
        elif p.startswith("**") and p.endswith("**") and len(p) > 3:
            out.append("\\fB" + esc(p[2:-2]) + "\\fR")
        elif p.startswith("*") and p.endswith("*") and len(p) > 2:
            out.append("\\fI" + esc(p[1:-1]) + "\\fR")
        else:
            out.append(esc(p))
    line = "".join(out)
    # esc() guards a leading dot of each piece; guard the joined line too.
    if line.startswith((".", "'")):
        line = "\\&" + line
    return line


class Renderer:
    def __init__(self, thinstack, version, date, src):
        self.thinstack = thinstack
        self.version = version
        self.date = date
        self.src = src
        self.out = []
        self.covered = set()
        self.lineno = 0

    def fail(self, msg):
        sys.exit("%s:%d: %s" % (self.src, self.lineno, msg))

    def run(self, args):
        if not self.thinstack:
            self.fail("needs --thinstack PROGRAM for this directive")
        try:
            res = subprocess.run([self.thinstack] + args, capture_output=True, text=True,
                                 timeout=60)
        except OSError as e:
            self.fail("cannot run %s: %s" % (self.thinstack, e))
        if res.returncode != 0:
            self.fail("thinstack %s: exit %d: %s" % (" ".join(args), res.returncode,
                                                     res.stderr.strip()))
        return res.stdout

    def verbatim(self, lines):
        self.out += [".PP", ".RS 4", ".nf"]
        self.out += [esc(l) if l.strip() else "" for l in lines]
        self.out += [".fi", ".RE"]

    def commands(self):
        text = self.run(["--help"])
        names, on = [], False
        for l in text.splitlines():
            if l.startswith("commands:"):
                on = True
            elif on and l.startswith("  ") and l.split():
                names.append(l.split()[0])
        return names

    def types(self):
        doc = json.loads(self.run(["types", "--json"]))
        for t in doc["types"]:
            self.out += [".SS " + esc(t["name"]), inline(t.get("summary", ""))]
            self.params(t.get("params", []), "")

    def params(self, params, prefix):
        for p in params:
            key = prefix + p["key"]
            what = p["kind"] + (", required" if p.get("required") else "")
            self.out += [".TP", "\\fB%s\\fR (%s)" % (esc(key), esc(what))]
            body = p.get("doc", "") or ""
            if p.get("choices"):
                body += (": " if body else "") + "one of " + ", ".join(p["choices"])
            self.out.append(inline(body) if body else "\\&")
            if p.get("fields"):
                self.params(p["fields"], key + ("[]." if p["kind"] == "array" else "."))

    def render(self, lines):
        mode = None  # None, "para", "tag", "verb"
        verb = []
        for raw in lines:
            self.lineno += 1
            line = raw.rstrip("\n")
            if mode == "verb" and not (line.startswith("    ") or line.startswith("\t")):
                self.verbatim(verb)
                verb, mode = [], None
            if self.lineno == 1:
                m = re.match(r"^% (\S+) (\d) (.*)$", line)
                if not m:
                    self.fail('the first line must be "% NAME SECTION title"')
                self.out.append('.TH "%s" "%s" "%s" "libthinstack %s" "%s"' % (
                    m.group(1).upper(), m.group(2), self.date, self.version, m.group(3)))
                # Options and commands stay whole words, to read and to grep.
                self.out += [".nh", ".ad l"]
                continue
            if not line.strip():
                mode = None
                continue
            if line.startswith("    ") or line.startswith("\t"):
                verb.append(line[4:] if line.startswith("    ") else line[1:])
                mode = "verb"
            elif line.startswith("## "):
                self.out.append(".SS " + inline(line[3:]))
                mode = None
            elif line.startswith("# "):
                self.out.append(".SH " + inline(line[2:]))
                mode = None
            elif line.startswith(": "):
                self.out += [".TP", inline(line[2:])]
                mode = "tag-head"
            elif line.startswith("- "):
                self.out += [".IP \\(bu 2", inline(line[2:])]
                mode = "item"
            elif line.startswith("@help"):
                words = line.split()[1:]
                if not words:
                    self.fail("@help needs a command")
                self.covered.add(words[0])
                self.verbatim(self.run(words + ["--help"]).rstrip("\n").splitlines())
                mode = None
            elif line.strip() == "@all-commands":
                missing = [c for c in self.commands() if c not in self.covered]
                if missing:
                    self.fail("no @help section for: " + " ".join(missing))
            elif line.strip() == "@types":
                self.types()
                mode = None
            elif line.startswith("@"):
                self.fail("unknown directive " + line.split()[0])
            else:
                if mode is None:
                    self.out.append(".PP")
                    mode = "para"
                elif mode == "tag-head":
                    mode = "tag"
                self.out.append(inline(line))
        if verb:
            self.verbatim(verb)
        return "\n".join(self.out) + "\n"


def main():
    args = sys.argv[1:]
    opts = {"--thinstack": None, "--version": "", "--date": ""}
    while args and args[0] in opts:
        opts[args[0]] = args[1]
        args = args[2:]
    if len(args) != 2:
        sys.exit("usage: render.py [--thinstack PROGRAM] [--version V] [--date D] SRC OUT")
    src, dst = args
    with open(src, encoding="utf-8") as f:
        lines = f.readlines()
    text = Renderer(opts["--thinstack"], opts["--version"], opts["--date"], src).render(lines)
    with open(dst + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
    main()
