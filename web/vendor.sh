#!/bin/sh
# Copies the browser libraries of the web chat from node_modules into the Python package, so the
# page works offline and from a plain `pip install` (no CDN). Run after `npm install` here:
#   cd web && npm install && npm run vendor
# The copies and their licenses are committed; package.json/package-lock.json pin the versions.
set -eu
cd "$(dirname "$0")"
nm=node_modules
out=../src/lhama/server/static/vendor
rm -rf "$out" && mkdir -p "$out/licenses"
cp "$nm/markdown-it/dist/markdown-it.min.js" "$out/"
cp "$nm/dompurify/dist/purify.min.js" "$out/"
cp "$nm/@highlightjs/cdn-assets/highlight.min.js" "$out/"
cp "$nm/@highlightjs/cdn-assets/styles/github.min.css" "$out/hljs-light.min.css"
cp "$nm/@highlightjs/cdn-assets/styles/github-dark.min.css" "$out/hljs-dark.min.css"
# Math: KaTeX (its woff2 fonts only: every browser the page supports reads them) and the
# markdown-it-texmath rules ($...$, $$...$$, \(...\), \[...\]).
mkdir -p "$out/katex/fonts"
cp "$nm/katex/dist/katex.min.js" "$nm/katex/dist/katex.min.css" "$out/katex/"
cp "$nm/katex/dist/fonts/"*.woff2 "$out/katex/fonts/"
cp "$nm/markdown-it-texmath/texmath.js" "$out/"
# markdown-it's bundle includes its dependencies: ship every license that applies.
cp "$nm/markdown-it/LICENSE" "$out/licenses/markdown-it.txt"
for dep in entities linkify-it mdurl uc.micro punycode.js; do
  cp "$nm/$dep"/LICENSE* "$out/licenses/$dep.txt"
done
cp "$nm/dompurify/LICENSE" "$out/licenses/dompurify.txt"
cp "$nm/@highlightjs/cdn-assets/LICENSE" "$out/licenses/highlight.js.txt"
cp "$nm/katex/LICENSE" "$out/licenses/katex.txt"
cp "$nm/markdown-it-texmath/license.txt" "$out/licenses/markdown-it-texmath.txt"
node -e 'const l=require("./package-lock.json").packages;for(const[k,v]of Object.entries(l))if(k)console.log(k.replace("node_modules/",""),v.version)' > "$out/VERSIONS.txt"
echo "vendored into $out:" && ls "$out"
