#!/usr/bin/env bash
# Fetch the published autoencoder and generators into pretrained_models/, checking each file's sha256.
#   bash pretrained_models/download.sh [autoenc] [checkerboard-L-2x] [checkerboard-L-4x]   (default: all three)
# The generators need autoenc. Files already present with the right hash are kept, and so are files that this
# repository tracks in git (its own config in place of the published one); any other file is downloaded again.
set -euo pipefail

root=$(cd "$(dirname "$0")" && pwd)
base_url=https://huggingface.co/deigen/checkerboardgen/resolve/main/pretrained_models

# folder/file and its published sha256
declare -A sha256=(
  [autoenc/autoencoder_config.yaml]=1d4c1cefa2a2edb55f1260645601e235c98ee41e4b51785c1dbcdabde4a60d14
  [autoenc/checkpoint.pth]=7503e2afd945546a0ba77cbb863227e8e5b1e1498190725c9358c6fed5720afa
  [checkerboard-L-2x/config.yaml]=8719010494d7a909f36831a600cbda45c8223377600aa493abb28d3caba1f32b
  [checkerboard-L-2x/checkpoint-last.pth]=d0b1c226a3b6bc84827855d2228bc21642774d99145d5978636f2a1e3553f297
  [checkerboard-L-4x/config.yaml]=5cc319d36b881d9c6f492e4ded345e0c5abd1ff6e5648424e55ba86f4ba2f30a
  [checkerboard-L-4x/checkpoint-last.pth]=e359552cb2b1d7ace912d0aaac2450e80680e2635b9cb537442aba3823692fa9
)

has_hash() {  # has_hash FILE SHA256
  [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$2" ]]
}

fetch() {  # fetch URL OUT
  if command -v curl >/dev/null; then curl -fL --retry 2 -o "$2" "$1"
  elif command -v wget >/dev/null; then wget -O "$2" "$1"
  else echo "error: neither curl nor wget is installed" >&2; return 1
  fi
}

download() {  # download folder/file
  local file=$1 out=$root/$1 url=$base_url/$1?download=true
  if has_hash "$out" "${sha256[$file]}"; then
    echo "ok: $out (sha256 matches, kept)"
    return
  fi
  if [[ -f $out ]] && git -C "$root" ls-files --error-unmatch "$file" >/dev/null 2>&1; then
    echo "kept: $out is tracked by git (this repository's own version), not replaced by the published file"
    return
  fi
  [[ ! -f $out ]] || echo "$out does not have the published sha256; downloading it again"
  mkdir -p "$(dirname "$out")"
  echo "downloading $url"
  if ! fetch "$url" "$out.part"; then
    rm -f "$out.part"
    echo "error: could not download $url (offline?); fetch it on a connected machine and copy it to $out" >&2
    exit 1
  fi
  if ! has_hash "$out.part" "${sha256[$file]}"; then
    rm -f "$out.part"
    echo "error: $url does not have the published sha256 ${sha256[$file]}; not saved to $out" >&2
    exit 1
  fi
  mv "$out.part" "$out"
  echo "ok: $out"
}

models=("$@")
[[ ${#models[@]} -gt 0 ]] || models=(autoenc checkerboard-L-2x checkerboard-L-4x)
for model in "${models[@]}"; do
  case $model in
    autoenc) download autoenc/autoencoder_config.yaml; download autoenc/checkpoint.pth ;;
    checkerboard-L-2x|checkerboard-L-4x) download "$model/config.yaml"; download "$model/checkpoint-last.pth" ;;
    *) echo "error: unknown model '$model' (choose from autoenc, checkerboard-L-2x, checkerboard-L-4x)" >&2; exit 2 ;;
  esac
done
