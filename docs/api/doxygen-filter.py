#!/usr/bin/env python3
"""Doxygen input filter for include/libthinstack/*.h.

The headers use plain C comments, so they read as text: a comment above a
declaration documents it, a comment after a field or enumerator on its
line documents that. This filter marks them for Doxygen on the fly
(`/*` -> `/**`, a trailing `/*` -> `/**<`, the file's first comment ->
`\\file`), leaving the headers themselves untouched. Section rulers
(`/* ---- */` and the title under them, followed by a blank line) stay
plain comments.
"""
import re
import sys



def trailing(line):
    """A comment after code on the same line documents that member."""
    return re.sub(r"^(\s*\S.*?)/\*(?![*!<])", r"\1/**<", line)


lines = open(sys.argv[1], encoding="utf-8").read().split("\n")
out = []
first = True
i = 0
while i < len(lines):
    line = lines[i]
    m = re.match(r"^(\s*)/\*(?![*!])(.*)$", line)
    if m:
        # The whole comment, up to its closing line.
        j = i
        while "*/" not in lines[j]:
            j += 1
        nxt = lines[j + 1] if j + 1 < len(lines) else ""
        body = lines[i:j + 1]
        ruler = re.match(r"^\s*/\* -{8,}", line) or (not nxt.strip() and not first)
        if first and i == 0:
            body[0] = m.group(1) + "/**" + m.group(2)
            body[-1] = body[-1].replace("*/", "\\file */")
            first = False
        elif not ruler:
            body[0] = m.group(1) + "/**" + m.group(2)
        # "#ifdef" in prose is not a link request.
        body = [re.sub(r"(?<![\\\w])#(?=\w)", r"\\#", b) for b in body]
        out.extend(body)
        i = j + 1
        # One comment over a run of declarations or macros ("The number of
        # devices, and the i-th") documents each of them.
        if not ruler and body[0].lstrip().startswith("/**") and "\\file" not in body[0]:
            k = i
            seen = False
            text = " ".join(re.sub(r"^\s*(/\*\*|\*/|\*)?", "", b).replace("*/", "").strip()
                            for b in body).strip()
            run = ("TS_EXTERN ", "#define ")
            while k < len(lines) and lines[k].startswith(run):
                end = (lambda l: l.rstrip().endswith("\\") is False) if lines[k].startswith(
                    "#define") else (lambda l: ";" in l)
                while not end(lines[k]):
                    out.append(lines[k])
                    k += 1
                if "/*" in lines[k]:
                    out.append(trailing(lines[k]))
                else:
                    out.append(lines[k] + (" /**< " + text + " */" if seen else ""))
                seen = True
                k += 1
            i = k
        continue
    # "size_t n, cap; /* x */": one declaration per member, each documented.
    m = re.match(r"^(\s+)([A-Za-z_][\w ]*?[\s*]+)(\w+), *(\w+);(.*)$", line)
    if m:
        ind, typ, a, b, rest = m.groups()
        doc = rest.strip() or "/* see the structure's comment */"
        doc = doc.replace("/*", "/**<", 1)
        out.append("%s%s%s; %s %s%s; %s" % (ind, typ, a, doc, typ.strip() + " ", b, doc))
        i += 1
        continue
    out.append(trailing(line))
    i += 1
sys.stdout.write("\n".join(out))
