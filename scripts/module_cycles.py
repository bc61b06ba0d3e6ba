#!/usr/bin/env python3
"""Arrows between keyward's top-level modules, and the cycles among them.

Reads every `crate::<module>` path (and `crate::Name` re-exported at the
root, mapped to its module) in the code of src/, comments left out, prints
each module's imports and exits with 1 if any cycle exists.
Usage: python3 scripts/module_cycles.py [src]
"""
import os,re,sys
root=sys.argv[1] if len(sys.argv)>1 else 'src'
mods={}
for dp,dn,fn in os.walk(root):
    for f in fn:
        if not f.endswith('.rs'): continue
        p=os.path.join(dp,f); rel=os.path.relpath(p,root)
        top=rel.split(os.sep)[0].replace('.rs','')
        if top=='lib': continue
        mods.setdefault(top,[]).append(p)
tops=set(mods)
# root re-export map from lib.rs
lib=open(os.path.join(root,'lib.rs')).read()
lib=re.sub(r'//[^\n]*','',lib)
rootmap={}
for m in re.finditer(r'pub use (?:crate::)?(\w+)(?:::(\w+))*::\{([^}]*)\}',lib):
    for n in re.findall(r'\w+',m.group(3)): rootmap.setdefault(n,m.group(1))
for m in re.finditer(r'pub use (?:crate::)?(\w+)::(?:\w+::)*(\w+);',lib):
    rootmap.setdefault(m.group(2),m.group(1))
def strip_comments(src):
    out=[]
    for line in src.split('\n'):
        i=line.find('//')
        out.append(line if i<0 else line[:i])
    return '\n'.join(out)
edges={}
for m,files in mods.items():
    for p in files:
        src=strip_comments(open(p).read())
        refs=[]
        for g in re.finditer(r'crate::\{([^}]*)\}',src):
            for part in g.group(1).split(','):
                w=re.match(r'\s*(\w+)',part)
                if w: refs.append(w.group(1))
        refs+=re.findall(r'crate::(\w+)',src)
        for t in refs:
            t2=t if t in tops else rootmap.get(t)
            if t2 and t2 in tops and t2!=m:
                edges.setdefault((m,t2),[]).append(f"{p}:{t}")
g={}
for (a,b) in edges: g.setdefault(a,set()).add(b)
idx={};low={};st=[];on=set();res=[];c=[0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in g.get(v,()):
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        res.append(comp)
for v in sorted(tops):
    if v not in idx: sc(v)
cyc=[c for c in res if len(c)>1]
for a in sorted(g): print(a,'->',sorted(g[a]))
print('cycles:',len(cyc),cyc)
for comp in cyc:
    for a in comp:
        for b in comp:
            if (a,b) in edges: print(' ',a,'->',b,sorted(set(edges[(a,b)]))[:6])
sys.exit(1 if cyc else 0)
