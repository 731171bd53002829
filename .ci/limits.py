#!/usr/bin/env python3
"""Structure limits of the library crates (issue 9): no source file over 600 lines and no
function over 80 lines, not counting `#[cfg(test)]` modules and `tests.rs` files.
Exits 1 naming every violation."""
import os, re, sys
roots = sys.argv[1:] or [r for r in ['keyrot-core/src', 'keyrot-http/src', 'keyrot-sqlx/src', 'keyrot-axum/src', 'keyrot-actix/src', 'keyrot-jwks/src', 'keyrot-kms/src'] if os.path.isdir(r)]
def strip_tests(lines):
    out=[]; i=0
    while i < len(lines):
        l=lines[i]
        if l.strip().startswith('#[cfg(test)]'):
            # skip following item
            j=i+1
            while j<len(lines) and lines[j].strip().startswith('#['): j+=1
            if j<len(lines) and lines[j].rstrip().endswith(';'):
                i=j+1; continue
            depth=0; started=False
            while j<len(lines):
                depth+=lines[j].count('{')-lines[j].count('}')
                if '{' in lines[j]: started=True
                j+=1
                if started and depth<=0: break
            i=j; continue
        out.append(l); i+=1
    return out
fnre=re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)')
bad=0
for r in roots:
    for dp,_,fs in os.walk(r):
        for f in fs:
            if not f.endswith('.rs') or f=='tests.rs': continue
            p=os.path.join(dp,f)
            lines=strip_tests(open(p).read().split('\n'))
            n=len(lines)
            if n>600: print(f'FILE {p}: {n} lines'); bad+=1
            i=0
            while i<len(lines):
                m=fnre.match(lines[i])
                if m:
                    depth=0; started=False; j=i
                    while j<len(lines):
                        s=lines[j]
                        if not started and s.rstrip().endswith(';') and '{' not in s: break
                        depth+=s.count('{')-s.count('}')
                        if '{' in s: started=True
                        if started and depth<=0: break
                        j+=1
                    ln=j-i+1
                    if started and ln>80: print(f'FN {p}:{i+1} {m.group(6)}: {ln} lines'); bad+=1
                i+=1
print('violations', bad)
sys.exit(1 if bad else 0)
