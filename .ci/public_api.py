#!/usr/bin/env python3
"""Public-API snapshots of keyrot's library crates (issue 21), so the surface only changes on purpose.

For each crate in LIBRARY_CRATES this builds the rustdoc JSON on the nightly toolchain
(`cargo +nightly rustdoc -p CRATE --all-features --lib -Z unstable-options --output-format json
-- --document-hidden-items`, RUSTDOCFLAGS unset, target dir `target/public-api` so the stable
build's fingerprints are left alone) and renders every item reachable publicly from the crate
root as one line, sorted:

  modules, structs (pub fields as `pub field` lines), enums (`pub variant` lines), unions,
  traits (their associated types, consts and methods; `(provided)` marks a default), functions
  and methods with their signatures, type aliases, constants and statics with their types,
  macros with their matchers, re-exports of other crates' items (`pub use PATH = SOURCE`),
  trait impls of public types (`impl Trait for Type`, with associated types; methods only for
  the crate's own traits), and the Send/Sync auto-trait impls (other auto traits and blanket
  impls are left out: they follow from the rest).

Every path an item is reachable at gets a line; an item's members are listed once, under its
canonical path (the shortest visible one); the other paths say `(re-export of CANONICAL)`.
Types are written with full paths: the public path for items of the snapshotted crates (so a
module move inside keyrot-core changes no other crate's listing), the defining path for other
crates' items. `#[async_trait]` methods are shown as `#[async_trait] async fn` rather than as
their expansion. `#[doc(hidden)]` items (and everything under them) are listed with a
`#[doc(hidden)]` marker. Parameter names are part of the rendered signatures.

  python3 .ci/public_api.py --check      self-test, regenerate, diff against <crate>/public-api.txt, exit 1 on a difference
  python3 .ci/public_api.py --bless      rewrite <crate>/public-api.txt
  python3 .ci/public_api.py --self-test  render an embedded JSON fixture (no cargo)
  Optional crate names after the flag restrict the run.
"""
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile

# The library crates whose public API is snapshotted: adding a crate is one line here.
LIBRARY_CRATES = [
    "keyrot-core",
    "keyrot-http",
    "keyrot-jwks",
    "keyrot-kms",
    "keyrot-sqlx",
    "keyrot-axum",
    "keyrot-actix",
    "keyrot-tonic",
]
# Workspace members with a library target that are not public APIs (shared test suites,
# benchmarks, examples). A member with a library target in neither list fails the run.
NOT_SNAPSHOTTED = ["keyrot-http-tests", "keyrot-benches", "keyrot-examples-support", "keyrot-readme", "grpc-resource-server"]

# Rustdoc JSON format versions this renderer was checked against (nightly 2026-05).
TESTED_FORMAT_VERSIONS = {57}
TARGET_SUBDIR = os.path.join("target", "public-api")
SNAPSHOT = "public-api.txt"
ACCEPT = "python3 .ci/public_api.py --bless"
KEPT_AUTO_TRAITS = {"Send", "Sync"}
# Compiler-internal marker traits that come with a derive (`#[derive(PartialEq)]`).
IGNORED_TRAITS = {"StructuralPartialEq"}
HIDDEN_ATTR = "#[doc(hidden)]"
ASYNC_TRAIT_LIFETIME = re.compile(r"^'(life[0-9]+|async_trait)$")


class RenderError(Exception):
    pass


def kind_of(item):
    inner = item["inner"]
    return inner if isinstance(inner, str) else next(iter(inner))


def attr_text(attr):
    if isinstance(attr, str):
        return attr
    if isinstance(attr, dict) and "other" in attr:
        return attr["other"]
    return ""


def is_hidden(item):
    return any(attr_text(a).replace(" ", "") == HIDDEN_ATTR for a in item.get("attrs") or [])


def has_attr(item, name):
    return any(a == name or (isinstance(a, dict) and name in a) for a in item.get("attrs") or [])


class Api:
    """The listing of one crate's rustdoc JSON."""

    def __init__(self, doc, external=None):
        self.external = external or {}  # defining path -> public path, for the other snapshotted crates
        self.index = doc["index"]
        self.paths = doc.get("paths", {})
        self.root = doc["root"]
        self.canonical = {}  # item id -> canonical public path
        self.lines = set()  # (sort key, line)
        self.done_impls = set()
        self.elide = False  # while rendering an async_trait method: leave out its 'lifeN lifetimes

    def item(self, id_):
        return None if id_ is None else self.index.get(str(id_))

    def is_local(self, id_):
        item = self.item(id_)
        if item is not None:
            return item.get("crate_id") == 0
        entry = self.paths.get(str(id_))
        return entry is not None and entry.get("crate_id") == 0

    # ---- reachability ----------------------------------------------------------------

    def module_entries(self, mod_id, stack):
        """(name, target, hidden) for each public name of a module, globs resolved.
        target is ("item", id), ("extern", use_item) or ("extern_glob", use_item)."""
        explicit, globbed = [], []
        module = self.index[str(mod_id)]["inner"]["module"]
        for child_id in module["items"]:
            child = self.item(child_id)
            if child is None or kind_of(child) == "impl":
                continue
            hidden = is_hidden(child)
            if kind_of(child) != "use":
                explicit.append((child["name"], ("item", child_id), hidden))
                continue
            use = child["inner"]["use"]
            target = self.item(use.get("id"))
            if not use["is_glob"]:
                if target is None:
                    explicit.append((use["name"], ("extern", child), hidden))
                else:
                    explicit.append((use["name"], ("item", use["id"]), hidden or is_hidden(target)))
            elif target is None:
                globbed.append(("*", ("extern_glob", child), hidden))
            elif kind_of(target) == "module" and use["id"] not in stack:
                for name, tgt, h in self.module_entries(use["id"], stack | {use["id"]}):
                    globbed.append((name, tgt, hidden or h))
            elif kind_of(target) == "enum":
                for vid in target["inner"]["enum"]["variants"]:
                    variant = self.index[str(vid)]
                    globbed.append((variant["name"], ("item", vid), hidden or is_hidden(variant)))
        taken = {(name, self.namespace(tgt)) for name, tgt, _ in explicit}
        return explicit + [e for e in globbed if (e[0], self.namespace(e[1])) not in taken]

    def namespace(self, target):
        kind, ref = target
        if kind == "item":
            k = kind_of(self.index[str(ref)])
        elif kind == "extern":
            k = (self.paths.get(str(ref["inner"]["use"].get("id"))) or {}).get("kind", "")
        else:
            return "glob"
        if k in ("macro", "proc_macro", "proc_attribute", "proc_derive"):
            return "macro"
        return "value" if k in ("function", "constant", "static") else "type"

    def reachable(self):
        """Every (path, target, hidden) reachable from the crate root, breadth first; each
        module is walked once, at its first (shortest) path."""
        root = self.index[str(self.root)]
        found, queue, walked = [], [((root["name"],), self.root, is_hidden(root))], {self.root}
        while queue:
            path, mod_id, hidden = queue.pop(0)
            for name, target, h in sorted(self.module_entries(mod_id, {mod_id}), key=lambda e: (e[0], str(e[1][0]))):
                entry = (path + (name,), target, hidden or h)
                found.append(entry)
                if target[0] == "item" and kind_of(self.index[str(target[1])]) == "module" and target[1] not in walked:
                    walked.add(target[1])
                    queue.append((entry[0], target[1], entry[2]))
        best = {}
        for path, target, hidden in found:
            if target[0] == "item":
                rank = (hidden, len(path), "::".join(path))
                if target[1] not in best or rank < best[target[1]]:
                    best[target[1]] = rank
        self.canonical = {id_: rank[2] for id_, rank in best.items()}
        return found

    # ---- rendering of types ----------------------------------------------------------

    def path_name(self, id_, written):
        if id_ is not None:
            if id_ in self.canonical:
                return self.canonical[id_]
            entry = self.paths.get(str(id_))
            if entry:
                defined = "::".join(entry["path"])
                return self.external.get(defined, defined)
        return written

    def exports(self):
        """Defining path -> public path of this crate's items, for rendering the crates that use them."""
        out = {}
        for id_, public in self.canonical.items():
            entry = self.paths.get(str(id_))
            if entry and entry.get("crate_id") == 0:
                out["::".join(entry["path"])] = public
        return out

    def anchor(self, impl):
        """Where an impl is listed: under the crate's own type it is for, else its own trait, else
        the first of the crate's public items its header names, else the trait."""
        trait = impl.get("trait")
        candidates = [impl["for"].get("resolved_path", {}).get("id") if isinstance(impl["for"], dict) else None,
                      trait and trait.get("id")]
        candidates += list(self.named_ids(trait)) + list(self.named_ids(impl["for"]))
        for id_ in candidates:
            if id_ is not None and self.is_local(id_) and id_ in self.canonical:
                return self.canonical[id_]
        return self.path_name(trait.get("id"), trait.get("path", "")) if trait else self.ty(impl["for"])

    def named_ids(self, node):
        if isinstance(node, dict):
            if "id" in node and "path" in node:
                yield node["id"]
            for value in node.values():
                yield from self.named_ids(value)
        elif isinstance(node, list):
            for value in node:
                yield from self.named_ids(value)

    def rpath(self, p):
        return self.path_name(p.get("id"), p.get("path", "")) + self.args(p.get("args"))

    def args(self, a):
        if not a:
            return ""
        if "angle_bracketed" in a:
            ab = a["angle_bracketed"]
            parts = [self.generic_arg(g) for g in ab.get("args", [])]
            parts += [self.constraint(c) for c in ab.get("constraints", ab.get("bindings", []))]
            return "<" + ", ".join(parts) + ">" if parts else ""
        if "parenthesized" in a:
            p = a["parenthesized"]
            out = p.get("output")
            return "(" + ", ".join(self.ty(t) for t in p["inputs"]) + ")" + (" -> " + self.ty(out) if out else "")
        if a == "return_type_notation" or "return_type_notation" in a:
            return "(..)"
        raise RenderError("generic args %r" % (a,))

    def generic_arg(self, g):
        if g == "infer":
            return "_"
        if "lifetime" in g:
            return "'_" if self.elided(g["lifetime"]) else g["lifetime"]
        if "type" in g:
            return self.ty(g["type"])
        if "const" in g:
            return self.const_expr(g["const"])
        raise RenderError("generic arg %r" % (g,))

    @staticmethod
    def const_expr(c):
        return c.get("expr") or c.get("value") or "_" if isinstance(c, dict) else str(c)

    def constraint(self, c):
        head = c["name"] + self.args(c.get("args"))
        binding = c.get("binding")
        if "equality" in binding:
            eq = binding["equality"]
            return head + " = " + (self.ty(eq["type"]) if "type" in eq else self.const_expr(eq.get("constant")))
        if "constraint" in binding:
            return head + ": " + self.bounds(binding["constraint"])
        raise RenderError("constraint %r" % (c,))

    def bounds(self, bounds):
        return " + ".join(self.bound(b) for b in bounds)

    def bound(self, b):
        if "trait_bound" in b:
            tb = b["trait_bound"]
            modifier = {"none": "", "maybe": "?", "maybe_const": "~const "}.get(tb.get("modifier", "none"), "")
            return self.hrtb(tb.get("generic_params")) + modifier + self.rpath(tb["trait"])
        if "outlives" in b:
            return b["outlives"]
        if "use" in b:
            names = [u if isinstance(u, str) else (u.get("lifetime") or u.get("param")) for u in b["use"]]
            return "use<" + ", ".join(names) + ">"
        raise RenderError("bound %r" % (b,))

    def hrtb(self, params):
        return "for<" + ", ".join(self.param(p) for p in params) + "> " if params else ""

    def ty(self, t):
        if t == "infer":
            return "_"
        (kind, v), = t.items()
        if kind == "resolved_path":
            return self.rpath(v)
        if kind in ("generic", "primitive"):
            return v
        if kind == "dyn_trait":
            parts = [self.hrtb(pt.get("generic_params")) + self.rpath(pt["trait"]) for pt in v["traits"]]
            return "dyn " + " + ".join(parts + ([v["lifetime"]] if v.get("lifetime") else []))
        if kind == "function_pointer":
            sig = v["sig"]
            ins = ", ".join(self.ty(a[1]) for a in sig["inputs"]) + (", ..." if sig.get("is_c_variadic") else "")
            out = " -> " + self.ty(sig["output"]) if sig.get("output") else ""
            return self.hrtb(v.get("generic_params")) + self.qualifiers(v["header"]) + "fn(" + ins + ")" + out
        if kind == "tuple":
            return "(" + ", ".join(self.ty(x) for x in v) + ("," if len(v) == 1 else "") + ")"
        if kind == "slice":
            return "[" + self.ty(v) + "]"
        if kind == "array":
            return "[%s; %s]" % (self.ty(v["type"]), v["len"])
        if kind == "pat":
            return self.ty(v["type"])
        if kind == "impl_trait":
            return "impl " + self.bounds(v)
        if kind == "infer":
            return "_"
        if kind == "raw_pointer":
            return ("*mut " if v["is_mutable"] else "*const ") + self.ty(v["type"])
        if kind == "borrowed_ref":
            lt = v["lifetime"] + " " if v.get("lifetime") and not self.elided(v["lifetime"]) else ""
            return "&" + lt + ("mut " if v["is_mutable"] else "") + self.ty(v["type"])
        if kind == "qualified_path":
            self_ty, trait = self.ty(v["self_type"]), v.get("trait")
            name = v["name"] + self.args(v.get("args"))
            if trait is None:
                return "<%s>::%s" % (self_ty, name)
            if not trait.get("path"):
                return "%s::%s" % (self_ty, name)
            return "<%s as %s>::%s" % (self_ty, self.rpath(trait), name)
        raise RenderError("type %r" % (t,))

    # ---- generics and signatures -------------------------------------------------------

    def param(self, p):
        (kind, v), = p["kind"].items()
        if kind == "lifetime":
            return p["name"] + (": " + " + ".join(v["outlives"]) if v.get("outlives") else "")
        if kind == "type":
            out = p["name"] + (": " + self.bounds(v["bounds"]) if v.get("bounds") else "")
            return out + (" = " + self.ty(v["default"]) if v.get("default") else "")
        if kind == "const":
            out = "const %s: %s" % (p["name"], self.ty(v["type"]))
            return out + (" = " + v["default"] if v.get("default") else "")
        raise RenderError("generic param %r" % (p,))

    def params(self, generics):
        ps = [self.param(p) for p in generics.get("params", []) if not self.synthetic(p)]
        return "<" + ", ".join(ps) + ">" if ps else ""

    @staticmethod
    def synthetic(p):
        return "type" in p["kind"] and p["kind"]["type"].get("is_synthetic")

    def predicates(self, generics):
        out = []
        for w in generics.get("where_predicates", []):
            (kind, v), = w.items()
            if kind == "bound_predicate":
                out.append(self.hrtb(v.get("generic_params")) + self.ty(v["type"]) + ": " + self.bounds(v["bounds"]))
            elif kind == "lifetime_predicate":
                out.append(v["lifetime"] + ": " + " + ".join(v["outlives"]))
            elif kind == "eq_predicate":
                rhs = v["rhs"]
                rhs = self.ty(rhs["type"]) if "type" in rhs else self.const_expr(rhs.get("constant"))
                out.append(self.ty(v["lhs"]) + " = " + rhs)
            else:
                raise RenderError("where predicate %r" % (w,))
        return out

    def where(self, generics, extra=()):
        preds = list(extra) + self.predicates(generics)
        return " where " + ", ".join(preds) if preds else ""

    def impl_bounds(self, generics):
        """An impl's generic bounds as where predicates, for the methods of an inherent impl."""
        out = []
        for p in generics.get("params", []):
            (kind, v), = p["kind"].items()
            if kind == "type" and v.get("bounds"):
                out.append(p["name"] + ": " + self.bounds(v["bounds"]))
            elif kind == "lifetime" and v.get("outlives"):
                out.append(p["name"] + ": " + " + ".join(v["outlives"]))
        return out + self.predicates(generics)

    @staticmethod
    def qualifiers(header):
        out = "const " if header.get("is_const") else ""
        out += "async " if header.get("is_async") else ""
        out += "unsafe " if header.get("is_unsafe") else ""
        abi = header.get("abi", "Rust")
        if isinstance(abi, dict):
            (name, v), = abi.items()
            name = v if name == "Other" else name + ("-unwind" if isinstance(v, dict) and v.get("unwind") else "")
            out += 'extern "%s" ' % name
        elif abi != "Rust":
            out += 'extern "%s" ' % abi
        return out

    def elided(self, lifetime):
        return self.elide and ASYNC_TRAIT_LIFETIME.match(lifetime) is not None

    def arg(self, name, t):
        if name == "self":
            if t == {"generic": "Self"}:
                return "self"
            ref = t.get("borrowed_ref")
            if ref and ref["type"] == {"generic": "Self"}:
                lt = ref["lifetime"] + " " if ref.get("lifetime") and not self.elided(ref["lifetime"]) else ""
                return "&" + lt + ("mut " if ref["is_mutable"] else "") + "self"
        return name + ": " + self.ty(t)

    def function(self, name, f, extra_where=(), vis=""):
        sugar = self.async_trait_sugar(f)
        if sugar:
            return self.with_elided_lifetimes(lambda: self.async_trait_function(name, f, sugar, extra_where, vis))
        sig = f["sig"]
        args = [self.arg(n, t) for n, t in sig["inputs"]] + (["..."] if sig.get("is_c_variadic") else [])
        out = " -> " + self.ty(sig["output"]) if sig.get("output") else ""
        generics = f["generics"]
        return "%s%sfn %s%s(%s)%s%s" % (
            vis, self.qualifiers(f["header"]), name, self.params(generics), ", ".join(args), out,
            self.where(generics, extra_where))

    # `#[async_trait]` turns `async fn f(&self, x: &X) -> T` into `fn f<'life0, 'life1, 'async_trait>(
    # &'life0 self, x: &'life1 X) -> Pin<Box<dyn Future<Output = T> + Send + 'async_trait>> where
    # 'life0: 'async_trait, ...`. Such a method is listed as `#[async_trait] async fn f(&self, x: &X) -> T`
    # (`#[async_trait(?Send)]` when the future is not Send); anything else it added stays in the where clause.

    def async_trait_sugar(self, f):
        """(output type, future is Send, remaining where predicates) of an async_trait method, or None."""
        params = f["generics"].get("params", [])
        names = [p["name"] for p in params]
        if "'async_trait" not in names or any(
                "lifetime" not in p["kind"] or not ASYNC_TRAIT_LIFETIME.match(p["name"]) for p in params):
            return None
        out = f["sig"].get("output") or {}
        pin = self.single_arg(out, "Pin")
        boxed = self.single_arg(pin, "Box") if pin else None
        dyn = boxed.get("dyn_trait") if isinstance(boxed, dict) else None
        if not dyn or dyn.get("lifetime") != "'async_trait" or not dyn["traits"]:
            return None
        future = dyn["traits"][0]["trait"]
        others = [self.path_name(t["trait"].get("id"), t["trait"]["path"]).split("::")[-1] for t in dyn["traits"][1:]]
        bindings = ((future.get("args") or {}).get("angle_bracketed") or {}).get("constraints", [])
        if (self.path_name(future.get("id"), future["path"]).split("::")[-1] != "Future" or len(bindings) != 1
                or bindings[0]["name"] != "Output" or set(others) - {"Send"}):
            return None
        output = bindings[0]["binding"].get("equality", {}).get("type")
        if output is None:
            return None
        rest = []
        for w in f["generics"].get("where_predicates", []):
            if "lifetime_predicate" in w and w["lifetime_predicate"]["outlives"] == ["'async_trait"]:
                continue
            if "bound_predicate" in w:
                bounds = [b for b in w["bound_predicate"]["bounds"] if b != {"outlives": "'async_trait"}]
                if not bounds:
                    continue
                w = {"bound_predicate": dict(w["bound_predicate"], bounds=bounds)}
            rest.append(w)
        return output, "Send" in others, rest

    def single_arg(self, t, name):
        rp = t.get("resolved_path") if isinstance(t, dict) else None
        if not rp or self.path_name(rp.get("id"), rp["path"]).split("::")[-1] != name:
            return None
        args = ((rp.get("args") or {}).get("angle_bracketed") or {}).get("args", [])
        return args[0].get("type") if len(args) == 1 and isinstance(args[0], dict) else None

    def async_trait_function(self, name, f, sugar, extra_where, vis):
        output, send, rest = sugar
        sig = f["sig"]
        args = [self.arg(n, t) for n, t in sig["inputs"]]
        ret = "" if output == {"tuple": []} else " -> " + self.ty(output)
        where = self.where({"where_predicates": rest}, extra_where)
        marker = "#[async_trait] " if send else "#[async_trait(?Send)] "
        return "%s%s%sasync fn %s(%s)%s%s" % (
            marker, vis, self.qualifiers(f["header"]), name, ", ".join(args), ret, where)

    def with_elided_lifetimes(self, render):
        self.elide = True
        try:
            return render()
        finally:
            self.elide = False

    # ---- items -------------------------------------------------------------------------

    def emit(self, key, line):
        self.lines.add((key, line))

    @staticmethod
    def marks(item, hidden):
        out = HIDDEN_ATTR + " " if hidden or is_hidden(item) else ""
        out += "#[deprecated] " if item.get("deprecation") else ""
        return out + ("#[non_exhaustive] " if has_attr(item, "non_exhaustive") else "")

    def header(self, path, item):
        kind, v = kind_of(item), item["inner"]
        v = v.get(kind) if isinstance(v, dict) else None
        if kind == "module":
            return "pub mod " + path
        if kind == "struct":
            g = v["generics"]
            k = v["kind"]
            if k == "unit":
                return "pub struct %s%s%s;" % (path, self.params(g), self.where(g))
            if "tuple" in k:
                fields = [("pub " + self.ty(self.index[str(f)]["inner"]["struct_field"])) if f is not None else "_"
                          for f in k["tuple"]]
                return "pub struct %s%s(%s)%s" % (path, self.params(g), ", ".join(fields), self.where(g))
            stripped = " { /* private fields */ }" if k["plain"].get("has_stripped_fields") else ""
            return "pub struct %s%s%s%s" % (path, self.params(g), self.where(g), stripped)
        if kind == "enum":
            stripped = " { /* hidden variants */ }" if v.get("has_stripped_variants") else ""
            return "pub enum %s%s%s%s" % (path, self.params(v["generics"]), self.where(v["generics"]), stripped)
        if kind == "union":
            stripped = " { /* private fields */ }" if v.get("has_stripped_fields") else ""
            return "pub union %s%s%s%s" % (path, self.params(v["generics"]), self.where(v["generics"]), stripped)
        if kind == "function":
            return self.function(path, v, vis="pub ")
        if kind == "trait":
            head = "pub " + ("unsafe " if v.get("is_unsafe") else "") + ("auto " if v.get("is_auto") else "")
            bounds = ": " + self.bounds(v["bounds"]) if v.get("bounds") else ""
            dyn = " // dyn-compatible" if v.get("is_dyn_compatible") else ""
            return "%strait %s%s%s%s%s" % (head, path, self.params(v["generics"]), bounds, self.where(v["generics"]), dyn)
        if kind == "trait_alias":
            return "pub trait %s%s = %s" % (path, self.params(v["generics"]), self.bounds(v["params"]))
        if kind == "type_alias":
            g = v["generics"]
            return "pub type %s%s = %s%s" % (path, self.params(g), self.ty(v["type"]), self.where(g))
        if kind == "constant":
            return "pub const %s: %s" % (path, self.ty(v["type"]))
        if kind == "static":
            return "pub static %s%s: %s" % ("mut " if v.get("is_mutable") else "", path, self.ty(v["type"]))
        if kind == "macro":
            text = item["inner"]["macro"]
            body = " ".join(text[text.find("{") + 1:text.rfind("}")].split()) if "{" in text else ""
            return "pub macro %s! { %s }" % (path, body)
        if kind == "proc_macro":
            return "pub proc_macro(%s) %s" % (v.get("kind"), path)
        if kind == "extern_crate":
            return "pub extern crate " + path
        if kind == "extern_type":
            return "pub extern type " + path
        if kind == "variant":
            return "pub variant " + path + self.variant_shape(v)
        if kind == "primitive":
            return "pub primitive " + path
        raise RenderError("item kind %r at %s" % (kind, path))

    def variant_shape(self, v):
        k = v["kind"]
        out = ""
        if isinstance(k, dict) and "tuple" in k:
            out = "(" + ", ".join(self.ty(self.index[str(f)]["inner"]["struct_field"]) if f is not None else "_"
                                  for f in k["tuple"]) + ")"
        elif isinstance(k, dict) and "struct" in k:
            fields = [self.index[str(f)] for f in k["struct"]["fields"]]
            parts = ["%s: %s" % (f["name"], self.ty(f["inner"]["struct_field"])) for f in fields]
            if k["struct"].get("has_stripped_fields"):
                parts.append("..")
            out = " { " + ", ".join(parts) + " }"
        if v.get("discriminant"):
            out += " = " + v["discriminant"]["expr"]
        return out

    def visit(self, path, target, hidden):
        kind, ref = target
        joined = "::".join(path)
        if kind != "item":
            use = ref["inner"]["use"]
            entry = self.paths.get(str(use.get("id")))
            source = self.path_name(use.get("id"), "") + " (%s)" % entry["kind"] if entry else use["source"]
            mark = HIDDEN_ATTR + " " if hidden else ""
            self.emit((joined,), "%spub use %s = %s" % (mark, joined, source + ("::*" if kind == "extern_glob" else "")))
            return
        item = self.index[str(ref)]
        line = self.marks(item, hidden) + self.header(joined, item)
        canonical = self.canonical.get(ref)
        if canonical != joined:
            self.emit((joined,), line + " (re-export of %s)" % canonical)
            return
        self.emit((joined,), line)
        k = kind_of(item)
        if k in ("struct", "union", "enum", "trait"):
            self.members(joined, item, hidden or is_hidden(item))

    def members(self, path, item, hidden):
        k = kind_of(item)
        v = item["inner"][k]
        if k == "struct" and "plain" in v["kind"] or k == "union":
            fields = v["kind"]["plain"]["fields"] if k == "struct" else v["fields"]
            for fid in fields:
                f = self.index[str(fid)]
                name = path + "::" + f["name"]
                self.emit((name,), self.marks(f, hidden) + "pub field %s: %s" % (name, self.ty(f["inner"]["struct_field"])))
        if k == "enum":
            for vid in v["variants"]:
                var = self.index[str(vid)]
                name = path + "::" + var["name"]
                self.emit((name,), self.marks(var, hidden) + "pub variant " + name + self.variant_shape(var["inner"]["variant"]))
        if k == "trait":
            for iid in v["items"]:
                self.trait_item(path, self.index[str(iid)], hidden)
            impls = v.get("implementations", [])
        else:
            impls = v.get("impls", [])
        for impl_id in impls:
            self.impl(impl_id)

    def trait_item(self, path, it, hidden):
        k = kind_of(it)
        v = it["inner"][k]
        name = path + "::" + it["name"]
        mark = self.marks(it, hidden)
        if k == "function":
            line = self.function(name, v) + (" (provided)" if v.get("has_body") else "")
        elif k == "assoc_const":
            line = "const %s: %s%s" % (name, self.ty(v["type"]), " (provided)" if v.get("value") is not None else "")
        elif k == "assoc_type":
            bounds = ": " + self.bounds(v["bounds"]) if v.get("bounds") else ""
            default = " = " + self.ty(v["type"]) if v.get("type") else ""
            line = "type %s%s%s%s%s" % (name, self.params(v["generics"]), bounds, self.where(v["generics"]), default)
        else:
            raise RenderError("trait item kind %r at %s" % (k, name))
        self.emit((name,), mark + line)

    def impl(self, impl_id):
        if impl_id in self.done_impls:
            return
        self.done_impls.add(impl_id)
        item = self.item(impl_id)
        if item is None:
            return
        v = item["inner"]["impl"]
        trait = v.get("trait")
        if v.get("blanket_impl") is not None:
            return
        trait_name = trait and self.path_name(trait.get("id"), trait.get("path", "")).split("::")[-1]
        if v.get("is_synthetic") and trait_name not in KEPT_AUTO_TRAITS:
            return
        if is_hidden(item) and has_attr(item, "automatically_derived"):
            return  # compiler-internal derives such as StructuralPartialEq
        for_ty = v["for"]
        for_id = for_ty.get("resolved_path", {}).get("id") if isinstance(for_ty, dict) else None
        if for_id is not None and self.is_local(for_id) and for_id not in self.canonical:
            return  # a type no user can name
        if trait_name in IGNORED_TRAITS:
            return
        self_ty = self.ty(for_ty)
        anchor = self.anchor(v)
        g = v["generics"]
        if trait is None:
            extra = self.impl_bounds(g)
            for iid in v["items"]:
                it = self.index[str(iid)]
                if it.get("visibility") != "public":
                    continue
                self.impl_member("%s::%s" % (self_ty, it["name"]), it, extra, (anchor + "::" + it["name"],), "pub ")
            return
        head = "%simpl%s %s%s for %s%s" % (
            "unsafe " if v.get("is_unsafe") else "", self.params(g), "!" if v.get("is_negative") else "",
            self.rpath(trait), self_ty, self.where(g))
        head = (HIDDEN_ATTR + " " if is_hidden(item) else "") + head
        key = (anchor, "~impl", head)
        self.emit(key, head)
        local_trait = self.is_local(trait.get("id"))
        qualified = "<%s as %s>" % (self_ty, self.rpath(trait))
        for iid in v["items"]:
            it = self.index[str(iid)]
            if kind_of(it) == "function" and not local_trait:
                continue
            self.impl_member("%s::%s" % (qualified, it["name"]), it, (), key + (it["name"],), "")

    def impl_member(self, name, it, extra_where, key, vis):
        k = kind_of(it)
        v = it["inner"][k]
        mark = self.marks(it, False)
        if k == "function":
            line = self.function(name, v, extra_where, vis)
        elif k == "assoc_const":
            line = vis + "const %s: %s" % (name, self.ty(v["type"]))
        elif k == "assoc_type":
            line = "type %s%s = %s" % (name, self.params(v["generics"]), self.ty(v["type"]) if v.get("type") else "_")
        else:
            raise RenderError("impl item kind %r at %s" % (k, name))
        self.emit(key, mark + line)

    def listing(self):
        for path, target, hidden in self.reachable():
            self.visit(path, target, hidden)
        root = self.index[str(self.root)]
        self.emit(("",), self.marks(root, False) + "pub mod " + root["name"])
        # Alphabetical by item path (case-insensitively), a type's impls and members after it.
        ordered = sorted(self.lines, key=lambda kl: (tuple(k.lower() for k in kl[0]), kl[0], kl[1]))
        return [line for _, line in ordered]


def render(doc, external=None):
    """(listing lines, this crate's defining path -> public path map)."""
    version = doc.get("format_version")
    if version not in TESTED_FORMAT_VERSIONS:
        print("public_api: warning: rustdoc JSON format_version %s, this script was checked against %s"
              % (version, sorted(TESTED_FORMAT_VERSIONS)), file=sys.stderr)
    try:
        api = Api(doc, external)
        return api.listing(), api.exports()
    except (RenderError, KeyError, TypeError, ValueError) as e:
        raise SystemExit("public_api: cannot read rustdoc JSON format_version %s: %s: %s"
                         % (version, type(e).__name__, e))


# ---- cargo ---------------------------------------------------------------------------


def metadata(root):
    out = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=root,
                         check=True, stdout=subprocess.PIPE).stdout
    return json.loads(out)


def library_targets(meta):
    """crate name -> (crate directory, library target name) for workspace members with a library."""
    libs = {}
    for p in meta["packages"]:
        for t in p["targets"]:
            if "lib" in t["kind"]:
                libs[p["name"]] = (os.path.dirname(p["manifest_path"]), t["name"].replace("-", "_"))
    return libs


def rustdoc_json(root, crate, lib_name):
    target = os.path.join(root, TARGET_SUBDIR)
    env = dict(os.environ)
    env.pop("RUSTDOCFLAGS", None)
    # Cargo's own `--output-format json` (rather than passing it to rustdoc after `--`) lets cargo
    # know the output, so an unchanged crate is not documented again.
    cmd = ["cargo", "+nightly", "rustdoc", "-p", crate, "--all-features", "--lib", "--target-dir", target,
           "-Z", "unstable-options", "--output-format", "json", "--", "--document-hidden-items"]
    subprocess.run(cmd, cwd=root, env=env, check=True)
    with open(os.path.join(target, "doc", lib_name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def public_paths(doc):
    api = Api(doc)
    api.reachable()
    return api.exports()


def snapshot_text(crate, lines):
    head = ["# Public API of %s (all features), generated by .ci/public_api.py from rustdoc JSON." % crate,
            "# Do not edit: after an intended change run `%s`." % ACCEPT]
    return "\n".join(head + lines) + "\n"


def main(argv):
    mode = argv[0] if argv else ""
    if mode == "--self-test":
        return self_test()
    if mode not in ("--check", "--bless"):
        print(__doc__, file=sys.stderr)
        return 2
    if mode == "--check" and self_test(quiet=True) != 0:
        return 1
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    libs = library_targets(metadata(root))
    unlisted = sorted(set(libs) - set(LIBRARY_CRATES) - set(NOT_SNAPSHOTTED))
    missing = sorted(set(LIBRARY_CRATES) - set(libs))
    if unlisted or missing:
        for name in unlisted:
            print("public_api: %s has a library target: add it to LIBRARY_CRATES (or NOT_SNAPSHOTTED) "
                  "in .ci/public_api.py" % name, file=sys.stderr)
        for name in missing:
            print("public_api: %s is in LIBRARY_CRATES but is not a workspace library" % name, file=sys.stderr)
        return 1
    crates = argv[1:] or LIBRARY_CRATES
    unknown = [c for c in crates if c not in LIBRARY_CRATES]
    if unknown:
        print("public_api: not in LIBRARY_CRATES: %s" % ", ".join(unknown), file=sys.stderr)
        return 2
    # Every listed crate is built (also for a subset): a crate's listing names the other crates'
    # items by their public paths, not by the private modules that define them.
    docs = {crate: rustdoc_json(root, crate, libs[crate][1]) for crate in LIBRARY_CRATES}
    exports = {crate: public_paths(doc) for crate, doc in docs.items()}
    failed = []
    with tempfile.TemporaryDirectory(prefix="public-api-") as tmp:
        for crate in crates:
            external = {}
            for other in LIBRARY_CRATES:
                if other != crate:
                    external.update(exports[other])
            lines, _ = render(docs[crate], external)
            text = snapshot_text(crate, lines)
            snapshot = os.path.join(libs[crate][0], SNAPSHOT)
            rel = os.path.relpath(snapshot, root)
            if mode == "--bless":
                with open(snapshot, "w", encoding="utf-8") as f:
                    f.write(text)
                print("public_api: wrote %s (%d lines)" % (rel, len(lines)))
                continue
            generated = os.path.join(tmp, crate + "." + SNAPSHOT)
            with open(generated, "w", encoding="utf-8") as f:
                f.write(text)
            old = open(snapshot, encoding="utf-8").read() if os.path.exists(snapshot) else ""
            if old != text:
                failed.append(rel)
                sys.stdout.writelines(difflib.unified_diff(
                    old.splitlines(True), text.splitlines(True), rel + " (checked in)", rel + " (generated)"))
            else:
                print("public_api: %s matches" % rel)
    if failed:
        print("\npublic_api: the public API differs from %s.\nIf the change is intended, accept it with:\n    %s"
              % (", ".join(failed), ACCEPT))
        return 1
    return 0


# ---- self-test -------------------------------------------------------------------------

def _p(path, id_, args=None):
    return {"path": path, "id": id_, "args": args}


def _fn(inputs, output=None, params=(), where=(), is_async=False, body=True):
    return {"function": {
        "sig": {"inputs": inputs, "output": output, "is_c_variadic": False},
        "generics": {"params": list(params), "where_predicates": list(where)},
        "header": {"is_const": False, "is_unsafe": False, "is_async": is_async, "abi": "Rust"},
        "has_body": body}}


def _item(id_, name, inner, vis="public", attrs=(), crate=0):
    return str(id_), {"id": id_, "crate_id": crate, "name": name, "visibility": vis, "attrs": list(attrs),
                      "deprecation": None, "inner": inner}


def _fixture():
    """A crate `demo`: a private module re-exported by name and by glob, a struct with a pub field,
    inherent and trait impls, a trait, a hidden function, a macro and a re-exported foreign item."""
    no_generics = {"params": [], "where_predicates": []}
    self_ref = {"borrowed_ref": {"lifetime": None, "is_mutable": False, "type": {"generic": "Self"}}}
    string = {"resolved_path": _p("String", 90)}
    t_bound = {"trait_bound": {"trait": _p("Clone", 91), "generic_params": [], "modifier": "none"}}
    index = dict([
        _item(0, "demo", {"module": {"is_crate": True, "items": [2, 3, 4, 20, 21, 22, 23], "is_stripped": False}}),
        _item(1, "inner", {"module": {"is_crate": False, "items": [10, 30], "is_stripped": False}}, vis="crate"),
        _item(2, None, {"use": {"source": "inner::Widget", "name": "Widget", "id": 10, "is_glob": False}}),
        _item(3, None, {"use": {"source": "serde_json::Value", "name": "Value", "id": 92, "is_glob": False}}),
        _item(4, "prelude", {"module": {"is_crate": False, "items": [5], "is_stripped": False}}),
        _item(5, None, {"use": {"source": "crate::inner", "name": "inner", "id": 1, "is_glob": True}}),
        _item(10, "Widget", {"struct": {
            "kind": {"plain": {"fields": [11], "has_stripped_fields": True}},
            "generics": {"params": [{"name": "T", "kind": {"type": {"bounds": [t_bound], "default": None,
                                                                     "is_synthetic": False}}}],
                         "where_predicates": []},
            "impls": [12, 14, 16, 17]}}),
        _item(11, "label", {"struct_field": string}),
        _item(12, None, {"impl": {
            "is_unsafe": False, "generics": {"params": [{"name": "T", "kind": {"type": {
                "bounds": [t_bound], "default": None, "is_synthetic": False}}}], "where_predicates": []},
            "provided_trait_methods": [], "trait": None,
            "for": {"resolved_path": _p("Widget", 10, {"angle_bracketed": {
                "args": [{"type": {"generic": "T"}}], "constraints": []}})},
            "items": [13, 18], "is_negative": False, "is_synthetic": False, "blanket_impl": None}}, vis="default"),
        _item(13, "label", _fn([["self", self_ref]], {"borrowed_ref": {
            "lifetime": None, "is_mutable": False, "type": {"primitive": "str"}}}, is_async=True)),
        _item(18, "secret", _fn([["self", self_ref]]), vis="crate"),
        _item(14, None, {"impl": {
            "is_unsafe": False, "generics": no_generics, "provided_trait_methods": [],
            "trait": _p("Shape", 20), "for": {"resolved_path": _p("Widget", 10, {"angle_bracketed": {
                "args": [{"type": {"primitive": "u8"}}], "constraints": []}})},
            "items": [15], "is_negative": False, "is_synthetic": False, "blanket_impl": None}}, vis="default"),
        _item(15, "area", _fn([["self", self_ref]], {"primitive": "f64"}), vis="default"),
        _item(16, None, {"impl": {
            "is_unsafe": False, "generics": no_generics, "provided_trait_methods": [],
            "trait": _p("Send", 93), "for": {"resolved_path": _p("Widget", 10)},
            "items": [], "is_negative": False, "is_synthetic": True, "blanket_impl": None}}, vis="default"),
        _item(17, None, {"impl": {
            "is_unsafe": False, "generics": no_generics, "provided_trait_methods": [],
            "trait": _p("Into", 94), "for": {"resolved_path": _p("Widget", 10)},
            "items": [], "is_negative": False, "is_synthetic": False, "blanket_impl": {"generic": "T"}}},
              vis="default"),
        _item(20, "Shape", {"trait": {
            "is_auto": False, "is_unsafe": False, "is_dyn_compatible": True, "items": [24],
            "generics": no_generics, "bounds": [], "implementations": [14]}}),
        _item(24, "area", _fn([["self", self_ref]], {"primitive": "f64"}, body=False), vis="default"),
        _item(21, "internal", _fn([["n", {"primitive": "usize"}]]), attrs=[{"other": "#[doc(hidden)]"}]),
        _item(22, "shout", {"macro": "macro_rules! shout {\n    ($e:expr) => { ... };\n}"},
              attrs=["macro_export"]),
        _item(23, "MAX", {"constant": {"type": {"primitive": "usize"},
                                       "const": {"expr": "8", "value": None, "is_literal": True}}}),
        _item(30, "make", _fn([["label", {"impl_trait": [{"trait_bound": {
            "trait": _p("Into", 94, {"angle_bracketed": {"args": [{"type": string}], "constraints": []}}),
            "generic_params": [], "modifier": "none"}}]}]],
            {"resolved_path": _p("Option", 95, {"angle_bracketed": {"args": [{"type": {
                "resolved_path": _p("Widget", 10, {"angle_bracketed": {
                    "args": [{"type": {"primitive": "u8"}}], "constraints": []}})}}], "constraints": []}})})),
    ])
    paths = {
        "90": {"crate_id": 3, "path": ["alloc", "string", "String"], "kind": "struct"},
        "91": {"crate_id": 2, "path": ["core", "clone", "Clone"], "kind": "trait"},
        "92": {"crate_id": 7, "path": ["serde_json", "value", "Value"], "kind": "enum"},
        "93": {"crate_id": 2, "path": ["core", "marker", "Send"], "kind": "trait"},
        "94": {"crate_id": 2, "path": ["core", "convert", "Into"], "kind": "trait"},
        "95": {"crate_id": 2, "path": ["core", "option", "Option"], "kind": "enum"},
        "10": {"crate_id": 0, "path": ["demo", "inner", "Widget"], "kind": "struct"},
    }
    return {"root": 0, "format_version": 57, "index": index, "paths": paths, "external_crates": {}}


SELF_TEST_EXPECTED = """\
pub mod demo
#[doc(hidden)] pub fn demo::internal(n: usize)
pub const demo::MAX: usize
pub mod demo::prelude
pub fn demo::prelude::make(label: impl core::convert::Into<alloc::string::String>) -> core::option::Option<demo::Widget<u8>>
pub struct demo::prelude::Widget<T: core::clone::Clone> { /* private fields */ } (re-export of demo::Widget)
pub trait demo::Shape // dyn-compatible
fn demo::Shape::area(&self) -> f64
pub macro demo::shout! { ($e:expr) => { ... }; }
pub use demo::Value = serde_json::Value (enum)
pub struct demo::Widget<T: core::clone::Clone> { /* private fields */ }
impl core::marker::Send for demo::Widget
impl demo::Shape for demo::Widget<u8>
fn <demo::Widget<u8> as demo::Shape>::area(&self) -> f64
pub async fn demo::Widget<T>::label(&self) -> &str where T: core::clone::Clone
pub field demo::Widget::label: alloc::string::String
"""


def self_test(quiet=False):
    got = "\n".join(render(_fixture(), {"serde_json::value::Value": "serde_json::Value"})[0]) + "\n"
    if got != SELF_TEST_EXPECTED:
        sys.stdout.writelines(difflib.unified_diff(
            SELF_TEST_EXPECTED.splitlines(True), got.splitlines(True), "expected", "rendered"))
        print("public_api: self-test FAILED")
        return 1
    if not quiet:
        print("public_api: self-test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
