#!/usr/bin/env python3
"""Prints the planted-fact context of tests/test_squeeze_e2e.cpp (PlantedFact): the first 16000
characters of perlsyn.pod + perlop.pod with one sentence planted at the first paragraph break
after the middle."""
t = "".join(open(f"/usr/share/perl/5.36.0/pod/{f}").read() for f in ("perlsyn.pod", "perlop.pod"))
t = t[:16000]
mid = t.find("\n\n", len(t) // 2)
print(t[:mid] + "\n\nThe secret password for the blue vault is PELICAN-42.\n" + t[mid:], end="")
