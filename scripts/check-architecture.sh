#!/usr/bin/env bash
# ARCHITECTURE.md names files and crates in backticks; every one must exist. Checked:
# - `*.rs` names, plain (`driver.rs`) or with folders (`handlers/publish.rs`,
#   `tern/src/server.rs`): some file under crates/, tests/, benches/ or fuzz*/ ends with it;
# - paths under the repository's own folders (`crates/...`, `tests/...`, `benches/...`,
#   `docs/...`, `scripts/...`, `config/...`): that file or folder exists, and a `#anchor` on it
#   is declared there (`<a id="anchor">`);
# - crate names (`tern`, `tern-broker`, ...) and the crate of a Rust path (`tern_store::Op`):
#   crates/<name>/ exists; a module on such a path (`tern_broker::accounts::Directory`), or
#   leading one (`driver::run_connection`), has its file.
# Items (`Broker` of `tern_broker::Broker`) are not checked. Placeholders (`<N>`,
# `*`) are skipped. Prints every missing name and fails when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

doc=${1:-ARCHITECTURE.md}
files=$(find crates tests benches fuzz* -name '*.rs' -not -path '*/target/*' 2>/dev/null)
missing=()

while IFS= read -r name; do
  case "$name" in
    *'<'* | *'*'* | *' '*) continue ;;
  esac
  case "$name" in
    *.rs)
      grep -qE "(^|/)${name//./\\.}\$" <<<"$files" || missing+=("$name")
      ;;
    crates/* | tests/* | benches/* | docs/* | scripts/* | config/* | fuzz/* | fuzz-expr/*)
      path=${name%%#*}
      if [[ ! -e "${path%/}" ]]; then
        missing+=("$name")
      elif [[ "$name" == *'#'* ]] && ! grep -q "id=\"${name#*#}\"" "$path"; then
        # `docs/flespi.md#publishing`: the page declares that anchor.
        missing+=("$name (no anchor)")
      fi
      ;;
    tern | tern-[a-z]*)
      [[ "$name" =~ ^tern(-[a-z]+)*$ ]] || continue
      [[ -d "crates/$name" ]] || missing+=("$name")
      ;;
    tern_[a-z]*::*)
      crate=${name%%::*}
      dir="crates/${crate//_/-}"
      if [[ ! -d "$dir" ]]; then
        missing+=("$name (no crate ${crate//_/-})")
      elif [[ "$name" =~ ^tern_[a-z_]+::([a-z_]+)::[A-Za-z_] ]]; then
        # A module on the way: its file or folder.
        module=${BASH_REMATCH[1]}
        [[ -e "$dir/src/$module.rs" || -d "$dir/src/$module" ]] ||
          missing+=("$name (no $dir/src/$module.rs)")
      fi
      ;;
    std::* | core::* | tokio::* | tokio_*::* | hyper::* | axum::*) ;;
    [a-z]*::[A-Za-z_]*)
      # `driver::run_connection`: a module of some crate.
      module=${name%%::*}
      [[ "$module" =~ ^[a-z_]+$ ]] || continue
      compgen -G "crates/*/src/$module.rs" >/dev/null ||
        compgen -G "crates/*/src/$module/mod.rs" >/dev/null ||
        missing+=("$name (no $module.rs)")
      ;;
  esac
done < <(grep -oE '`[^`]+`' "$doc" | tr -d '`' | sort -u)

if ((${#missing[@]})); then
  echo "$doc names what does not exist:"
  printf '  %s\n' "${missing[@]}"
  exit 1
fi
echo "$doc: every file and crate it names exists"
