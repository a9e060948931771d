"""Reads an Autobahn TestSuite index.json and fails on any failed case.

NON-STRICT (the gateway closed the connection at once on a protocol error,
while an echo was still travelling through the backend) is accepted except
in 6.4.*, where fail-fast on invalid UTF-8 is required.
"""
import json, sys
idx = json.load(open(sys.argv[1]))
bad = []
counts = {}
for agent, cases in idx.items():
    for case, r in sorted(cases.items(), key=lambda kv: [int(x) for x in kv[0].split('.')]):
        b, bc = r["behavior"], r["behaviorClose"]
        counts[b] = counts.get(b, 0) + 1
        strict = case.startswith("6.4.")
        ok = b in ("OK", "INFORMATIONAL") or (b == "NON-STRICT" and not strict)
        okc = bc in ("OK", "INFORMATIONAL") or (bc == "NON-STRICT" and not strict)
        if not (ok and okc):
            bad.append((agent, case, b, bc))
print(counts)
for x in bad: print(*x)
print(f"autobahn-{sys.argv[2] if len(sys.argv) > 2 else 'run'}: {sum(counts.values()) - len(bad)} passed, {len(bad)} failed")
expected = int(sys.argv[3]) if len(sys.argv) > 3 else 1
if sum(counts.values()) < expected:
    print(f"only {sum(counts.values())} cases reported, expected {expected}")
    sys.exit(1)
sys.exit(1 if bad else 0)
