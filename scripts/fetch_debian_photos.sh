#!/usr/bin/env bash
# Fetch ~40 real photographs (1-6 MP) from Debian wallpaper packages into a folder for `udvd prepare-data`.
#
#   scripts/fetch_debian_photos.sh [DEST=data/photos] [WORK=data/debian-work]
#
# Needs apt-get (a Debian/Ubuntu system whose sources carry these packages; run `apt-get update` first) and dpkg.
# The packages are downloaded with `apt-get download` (no root, nothing installed) and unpacked with `dpkg -x` into
# WORK; the curated photo files below are copied into DEST as <package>__<basename>, next to LICENSES.tsv
# (file, package, license) and each package's copyright file. Renders, paintings and logos of these packages
# are left out on purpose: SR training wants real camera images. Licenses are from each package's
# /usr/share/doc/<package>/copyright (checked against Debian bookworm).
set -euo pipefail

DEST=${1:-data/photos}
WORK=${2:-data/debian-work}

# package | path inside the package | license (per /usr/share/doc/<package>/copyright)
PHOTOS="
lomiri-wallpapers-16.04|usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg|CC-BY-SA-4.0
lomiri-wallpapers-16.04|usr/share/backgrounds/Dragonfly_by_Bolly.jpg|CC-BY-SA-4.0
lomiri-wallpapers-16.04|usr/share/backgrounds/Picture_0B_by_freespace.jpg|CC-BY-4.0
lomiri-wallpapers-16.04|usr/share/backgrounds/Picture_1A_by_freespace.jpg|CC-BY-4.0
lomiri-wallpapers-16.04|usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg|CC-BY-4.0
lomiri-wallpapers-16.04|usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg|CC-BY-4.0
lomiri-wallpapers-16.04|usr/share/backgrounds/free_by_Peter_Nerlich.jpg|CC-BY-SA-4.0
lomiri-wallpapers-16.04|usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg|CC-BY-4.0
lomiri-wallpapers-16.04|usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg|CC-BY-SA-4.0
lomiri-wallpapers-16.04|usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg|CC-BY-4.0
lomiri-wallpapers-16.04|usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg|CC-BY-4.0
lomiri-wallpapers-16.04|usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg|CC0-1.0
lomiri-wallpapers-16.04|usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg|CC-BY-4.0
lomiri-wallpapers-20.04|usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg|CC-BY-SA-3.0
mate-backgrounds|usr/share/backgrounds/mate/nature/Aqua.jpg|GPL-2+
mate-backgrounds|usr/share/backgrounds/mate/nature/Blinds.jpg|GPL-2+
mate-backgrounds|usr/share/backgrounds/mate/nature/Dune.jpg|GPL-2+
mate-backgrounds|usr/share/backgrounds/mate/nature/FreshFlower.jpg|GPL-2+
mate-backgrounds|usr/share/backgrounds/mate/nature/Garden.jpg|GPL-2+
mate-backgrounds|usr/share/backgrounds/mate/nature/GreenMeadow.jpg|GPL-2+
mate-backgrounds|usr/share/backgrounds/mate/nature/LadyBird.jpg|GPL-2+
mate-backgrounds|usr/share/backgrounds/mate/nature/RainDrops.jpg|GPL-2+
mate-backgrounds|usr/share/backgrounds/mate/nature/Storm.jpg|GPL-2+
mate-backgrounds|usr/share/backgrounds/mate/nature/TwoWings.jpg|GPL-2+
mate-backgrounds|usr/share/backgrounds/mate/nature/Wood.jpg|GPL-2+
mate-backgrounds|usr/share/backgrounds/mate/nature/YellowFlower.jpg|GPL-2+
palapeli-data|usr/share/palapeli/collection/castle-maintenon.jpg|GPL-2+
palapeli-data|usr/share/palapeli/collection/cincinnati-bridge.jpg|GPL-2+
palapeli-data|usr/share/palapeli/collection/citrus-fruits.jpg|GPL-2+
palapeli-data|usr/share/palapeli/collection/european-honey-bee.jpg|GPL-2+
palapeli-data|usr/share/palapeli/collection/panther-chameleon-female.jpg|GPL-2+
plasma-workspace-wallpapers|usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg|GPL-2+
plasma-workspace-wallpapers|usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg|GPL-2+
plasma-workspace-wallpapers|usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg|GPL-2+
plasma-workspace-wallpapers|usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg|GPL-2+
plasma-workspace-wallpapers|usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg|GPL-2+
plasma-workspace-wallpapers|usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg|GPL-2+
plasma-workspace-wallpapers|usr/share/wallpapers/Grey/contents/images/2560x1600.jpg|GPL-2+
plasma-workspace-wallpapers|usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg|GPL-2+
plasma-workspace-wallpapers|usr/share/wallpapers/Path/contents/images/2560x1600.jpg|GPL-2+
plasma-workspace-wallpapers|usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg|GPL-2+
"

packages=$(printf '%s\n' "$PHOTOS" | awk -F'|' 'NF == 3 {print $1}' | sort -u)
mkdir -p "$WORK/debs" "$WORK/root" "$DEST"
WORK=$(cd "$WORK" && pwd)
for pkg in $packages; do
    if ! ls "$WORK/debs/${pkg}"_*.deb >/dev/null 2>&1; then
        (cd "$WORK/debs" && apt-get download "$pkg") || {
            echo "fetch_debian_photos: cannot download $pkg (run 'apt-get update'; is it in your apt sources?)" >&2
            exit 1
        }
    fi
    dpkg -x "$(ls "$WORK/debs/${pkg}"_*.deb | head -n 1)" "$WORK/root"
    cp "$WORK/root/usr/share/doc/$pkg/copyright" "$DEST/$pkg.copyright"
done

printf 'file\tpackage\tlicense\n' > "$DEST/LICENSES.tsv"
count=0
while IFS='|' read -r pkg path license; do
    [ -n "$pkg" ] || continue
    src="$WORK/root/$path"
    [ -f "$src" ] || { echo "fetch_debian_photos: $pkg no longer ships $path" >&2; exit 1; }
    # Plasma wallpapers are all named <W>x<H>.jpg: keep the wallpaper's folder name in the file name.
    name=$(basename "$path")
    case "$path" in usr/share/wallpapers/*) name=$(echo "$path" | cut -d/ -f4).jpg ;; esac
    cp "$src" "$DEST/${pkg}__${name}"
    printf '%s\t%s\t%s\n' "${pkg}__${name}" "$pkg" "$license" >> "$DEST/LICENSES.tsv"
    count=$((count + 1))
done <<< "$PHOTOS"
echo "fetch_debian_photos: $count photos in $DEST (licenses: $DEST/LICENSES.tsv)"
