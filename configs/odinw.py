"""ODinW ("Object Detection in the Wild") as data: the 35 Roboflow datasets of ODinW-35 and GLIP's ODinW-13 subset.

  python -m glipjax.tools.prepare_odinw --root DATASET/odinw --data_dir runs/tfds --suite odinw13

The figure is the mean over a suite's datasets of each one's COCO AP, every dataset prompted with its own category
names (glipjax/evaluators/odinw.py). The list, files and names follow GLIP's task yamls (microsoft/GLIP
`configs/odinw_35/*.yaml`, the 35 named by `configs/odinw_35/_all.json`, and `configs/odinw_13/*.yaml`):
- paths are relative to the ODinW root, the folder GLIP's `odinw/download.py` unzips into (GLIP's yamls write them
  under `odinw/`); every split is a COCO json, `annotations_without_background.json` (Roboflow's dummy category 0
  removed) beside its images, or `<split>_annotations_without_background.json` in one `export/` image folder;
- `validation` is the split GLIP scores zero-shot (its DATASETS.TEST): `valid/` for most, `mini_val/` (a subset
  of `valid/`, for speed) for 11 datasets; fine-tuning reports `test`, trains on `train`;
- `label_map` is GLIP's OVERRIDE_CATEGORY (its README evaluates with USE_OVERRIDE_CATEGORY True): the prompt names,
  replacing the files' own; `caption_prompt` is GLIP's CAPTION_PROMPT (USE_CAPTION_PROMPT True), which rewrites
  the prompt around some names. Nothing here consumes it yet: prepared datasets prompt with the label_map names.
"""
from __future__ import annotations

import dataclasses
import re

ANNOTATIONS = "annotations_without_background.json"


@dataclasses.dataclass(frozen=True)
class Files:
  annotations: str  # the COCO json, relative to the ODinW root
  images: str       # the folder its file_names are relative to


@dataclasses.dataclass(frozen=True)
class OdinwDataset:
  name: str          # the prepared dataset's name (config.data.sources, --name of glipjax.data.prepare)
  glip_config: str   # GLIP's task yaml: configs/odinw_35/<glip_config>.yaml
  validation: Files  # the split GLIP evaluates zero-shot
  train: Files
  test: Files
  # {category id: name}, a --label_map for glipjax.data.prepare; None: the files' own names.
  label_map: dict[int, str] | None = dataclasses.field(default=None, hash=False)
  # (prefix, name, suffix) per category in id order, or None: the plain "name. name. ..." prompt.
  caption_prompt: tuple[tuple[str, str, str], ...] | None = None

  @property
  def annotations(self) -> str:
    return self.validation.annotations

  @property
  def images(self) -> str:
    return self.validation.images

  def files(self, split: str) -> Files:
    """The files of one of glipjax's splits: 'validation', 'train' or 'test'."""
    if split not in ("validation", "train", "test"):
      raise ValueError(f"unknown split {split!r}; use validation, train or test")
    return getattr(self, split)


def _ids(names: tuple[str, ...]) -> dict[int, str]:
  return {i: n for i, n in enumerate(names, start=1)}  # every GLIP override numbers its categories 1..N


def _folders(name: str, config: str, folder: str, names: tuple[str, ...] | None, *, evaluate: str = "valid",
             test: str = "test", prompt=None) -> OdinwDataset:
  """Roboflow's layout: <folder>/<split>/ holds a split's images and its json."""
  files = lambda split: Files(f"{folder}/{split}/{ANNOTATIONS}", f"{folder}/{split}")
  return OdinwDataset(name, config, files(evaluate), files("train"), files(test),
                      _ids(names) if names is not None else None, prompt)


def _export(name: str, config: str, folder: str, names: tuple[str, ...]) -> OdinwDataset:
  """An `export/` folder: all images together, the split named by the json."""
  files = lambda split: Files(f"{folder}/{split}_{ANNOTATIONS}", folder)
  return OdinwDataset(name, config, files("val"), files("train"), files("test"), _ids(names))


_DRONE = ("boat", "car", "dock", "jetski", "lift")
_PLANTS = ("Apple Scab Leaf", "Apple leaf", "Apple rust leaf", "Bell_pepper leaf", "Bell_pepper leaf spot",
           "Blueberry leaf", "Cherry leaf", "Corn Gray leaf spot", "Corn leaf blight", "Corn rust leaf", "Peach leaf",
           "Potato leaf", "Potato leaf early blight", "Potato leaf late blight", "Raspberry leaf", "Soyabean leaf",
           "Soybean leaf", "Squash Powdery mildew leaf", "Strawberry leaf", "Tomato Early blight leaf",
           "Tomato Septoria leaf spot", "Tomato leaf", "Tomato leaf bacterial spot", "Tomato leaf late blight",
           "Tomato leaf mosaic virus", "Tomato leaf yellow virus", "Tomato mold leaf",
           "Tomato two spotted spider mites leaf", "grape leaf", "grape leaf black rot")
_CATS = ("Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau", "Maine_Coon", "Persian",
         "Ragdoll", "Russian_Blue", "Siamese", "Sphynx")
_DOGS = ("american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer", "chihuahua",
         "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees", "havanese",
         "japanese_chin", "keeshond", "leonberger", "miniature_pinscher", "newfoundland", "pomeranian", "pug",
         "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier",
         "yorkshire_terrier")
_FONTS = ("American Typewriter", "Andale Mono", "Apple Chancery", "Arial", "Avenir", "Baskerville", "Big Caslon",
          "Bradley Hand", "Brush Script MT", "Chalkboard", "Comic Sans MS", "Copperplate", "Courier", "Didot", "Futura",
          "Geneva", "Georgia", "Gill Sans", "Helvetica", "Herculanum", "Impact", "Kefa", "Lucida Grande", "Luminari",
          "Marker Felt", "Menlo", "Monaco", "Noteworthy", "Optima", "PT Sans", "PT Serif", "Palatino", "Papyrus",
          "Phosphate", "Rockwell", "SF Pro", "SignPainter", "Skia", "Snell Roundhand", "Tahoma", "Times New Roman",
          "Trebuchet MS", "Verdana")
# Boggle tiles as GLIP names them, "o " and "t\" (stray labels of the export) included: the ids must line up.
_BOGGLE = ("Q", "a", "an", "b", "c", "d", "e", "er", "f", "g", "h", "he", "i", "in", "j", "k", "l", "m", "n", "o",
           "o ", "p", "q", "qu", "r", "s", "t", "t\\", "th", "u", "v", "w", "wild", "x", "y", "z")
_CHESS = tuple(f"{c} {p}" for c in ("black", "white") for p in ("bishop", "king", "knight", "pawn", "queen", "rook"))

# In the order of GLIP's configs/odinw_35/_all.json.
ODINW35: tuple[OdinwDataset, ...] = (
    _folders("odinw_aerial_maritime_drone_large", "AerialMaritimeDrone_large", "AerialMaritimeDrone/large", _DRONE),
    _folders("odinw_aerial_maritime_drone_tiled", "AerialMaritimeDrone_tiled", "AerialMaritimeDrone/tiled", _DRONE),
    _folders("odinw_american_sign_language_letters",
             "AmericanSignLanguageLetters_American_Sign_Language_Letters.v1-v1.coco",
             "AmericanSignLanguageLetters/American Sign Language Letters.v1-v1.coco",
             tuple(chr(c) for c in range(ord("A"), ord("Z") + 1))),
    _folders("odinw_aquarium", "Aquarium_Aquarium_Combined.v2-raw-1024.coco",
             "Aquarium/Aquarium Combined.v2-raw-1024.coco",
             ("fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"),
             prompt=((" ", "fish", ""), ("", "jellyfish", ""), ("", "penguin", " , which is black and white"),
                     ("", "puffin", " with orange beaks "), ("", "shark", ""), ("", "starfish", ""),
                     ("", "stingray", " which is flat and round"))),
    _folders("odinw_bccd", "BCCD_BCCD.v3-raw.coco", "BCCD/BCCD.v3-raw.coco", ("Platelets", "RBC", "WBC")),
    # GLIP blanks category 1 (a stray class of the export, the 12 real ones follow) so that it is never prompted.
    # A prepared category needs a name, so category 1 keeps the file's own here: one more name in the prompt.
    dataclasses.replace(
        _folders("odinw_chess_pieces", "ChessPieces_Chess_Pieces.v23-raw.coco", "ChessPieces/Chess Pieces.v23-raw.coco",
                 None),
        label_map={i: n for i, n in enumerate(_CHESS, start=2)}),
    _folders("odinw_cottontail_rabbits", "CottontailRabbits", "CottontailRabbits", ("rabbit",)),
    _folders("odinw_drone_control", "DroneControl_Drone_Control.v3-raw.coco", "DroneControl/Drone Control.v3-raw.coco",
             ("follow", "follow_hand", "land", "land_hand", "null", "object", "takeoff", "takeoff-hand"),
             evaluate="mini_val"),
    _folders("odinw_egohands_generic", "EgoHands_generic", "EgoHands/generic", ("hand",), evaluate="mini_val",
             prompt=((" ", "hand", " of a person"),)),
    _folders("odinw_egohands_specific", "EgoHands_specific", "EgoHands/specific",
             ("myleft", "myright", "yourleft", "yourright"), evaluate="mini_val"),
    _folders("odinw_hard_hat_workers", "HardHatWorkers_raw", "HardHatWorkers/raw", ("head", "helmet", "person")),
    _folders("odinw_mask_wearing", "MaskWearing_raw", "MaskWearing/raw", ("mask", "no-mask")),
    _folders("odinw_mountain_dew_commercial", "MountainDewCommercial", "MountainDewCommercial", ("bottle",)),
    _folders("odinw_north_america_mushrooms", "NorthAmericaMushrooms_North_American_Mushrooms.v1-416x416.coco",
             "NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco", ("flat mushroom", "yellow mushroom")),
    _folders("odinw_oxford_pets_by_breed", "OxfordPets_by-breed", "OxfordPets/by-breed",
             tuple(f"cat-{c}" for c in _CATS) + tuple(f"dog-{d}" for d in _DOGS), evaluate="mini_val"),
    _folders("odinw_oxford_pets_by_species", "OxfordPets_by-species", "OxfordPets/by-species", ("cat", "dog"),
             evaluate="mini_val"),
    _folders("odinw_pklot_640", "PKLot_640", "PKLot/640", ("space-empty", "space-occupied"), evaluate="mini_val"),
    _folders("odinw_packages", "Packages_Raw", "Packages/Raw", ("package",),
             prompt=(("there is a ", "package", " on the porch"),)),
    # PascalVOC has no test split of its own: GLIP's yaml points `test` at valid/ too.
    _folders("odinw_pascal_voc", "PascalVOC", "PascalVOC",
             ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
              "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"),
             test="valid"),
    _folders("odinw_raccoon", "Raccoon_Raccoon.v2-raw.coco", "Raccoon/Raccoon.v2-raw.coco", ("raccoon",)),
    _folders("odinw_shellfish_open_images", "ShellfishOpenImages_raw", "ShellfishOpenImages/raw",
             ("Crab", "Lobster", "Shrimp")),
    _folders("odinw_thermal_cheetah", "ThermalCheetah", "ThermalCheetah", ("cheetah", "human")),
    _folders("odinw_uno_cards", "UnoCards_raw", "UnoCards/raw", tuple(str(i) for i in range(15)), evaluate="mini_val"),
    _folders("odinw_vehicles_open_images", "VehiclesOpenImages_416x416", "VehiclesOpenImages/416x416",
             ("Ambulance", "Bus", "Car", "Motorcycle", "Truck"), evaluate="mini_val"),
    _folders("odinw_wildfire_smoke", "WildfireSmoke", "WildfireSmoke", ("smoke",)),
    _export("odinw_boggle_boards", "boggleBoards_416x416AutoOrient_export_", "boggleBoards/416x416AutoOrient/export",
            _BOGGLE),
    _folders("odinw_brackish_underwater", "brackishUnderwater_960x540", "brackishUnderwater/960x540",
             ("crab", "fish", "jellyfish", "shrimp", "small_fish", "starfish"), evaluate="mini_val"),
    _export("odinw_dice_medium_color", "dice_mediumColor_export", "dice/mediumColor/export",
            ("1", "2", "3", "4", "5", "6")),
    _folders("odinw_open_poetry_vision", "openPoetryVision_512x512", "openPoetryVision/512x512", _FONTS,
             evaluate="mini_val"),
    _export("odinw_pistols", "pistols_export", "pistols/export", ("pistol",)),
    # plantdoc/100x100 has a yaml too but is not one of the 35 (_all.json).
    _folders("odinw_plantdoc_416x416", "plantdoc_416x416", "plantdoc/416x416", _PLANTS),
    _folders("odinw_pothole", "pothole", "pothole", ("pothole",),
             prompt=(("there are some ", "holes", " on the road"),)),
    _export("odinw_selfdriving_car", "selfdrivingCar_fixedLarge_export_", "selfdrivingCar/fixedLarge/export",
            ("biker", "car", "pedestrian", "trafficLight", "trafficLight-Green", "trafficLight-GreenLeft",
             "trafficLight-Red", "trafficLight-RedLeft", "trafficLight-Yellow", "trafficLight-YellowLeft", "truck")),
    _folders("odinw_thermal_dogs_and_people", "thermalDogsAndPeople", "thermalDogsAndPeople", ("dog", "person")),
    _folders("odinw_website_screenshots", "websiteScreenshots", "websiteScreenshots",
             ("button", "field", "heading", "iframe", "image", "label", "link", "text"), evaluate="mini_val"),
)

# GLIP's 13 (configs/odinw_13), the same entries as in ODINW35 so that a prepared name means one thing. Its
# June-2022 odinw_13 yamls differ in prompts only: no caption prompts, and two other name lists (below; the
# odinw_35 renames came in Oct 2022). To score GLIP's exact ODinW-13 prompts, prepare those two under other names.
ODINW13_NAMES = (
    "odinw_aerial_maritime_drone_large", "odinw_aquarium", "odinw_cottontail_rabbits", "odinw_egohands_generic",
    "odinw_north_america_mushrooms", "odinw_packages", "odinw_pascal_voc", "odinw_pistols", "odinw_pothole",
    "odinw_raccoon", "odinw_shellfish_open_images", "odinw_thermal_dogs_and_people", "odinw_vehicles_open_images")
ODINW13_LABEL_MAPS = {"odinw_cottontail_rabbits": {1: "Cottontail-Rabbit"},
                      "odinw_north_america_mushrooms": {1: "CoW", 2: "chanterelle"}}

_BY_NAME = {d.name: d for d in ODINW35}
SUITES: dict[str, tuple[OdinwDataset, ...]] = {
    "odinw13": tuple(_BY_NAME[n] for n in ODINW13_NAMES),
    "odinw35": ODINW35,
}

NAME_PATTERN = re.compile(r"[a-z0-9_]+")


class UnknownSuite(KeyError, ValueError):
  def __str__(self):
    return str(self.args[0])


def suite(name: str) -> tuple[OdinwDataset, ...]:
  """The datasets of an ODinW suite ('odinw13', 'odinw35')."""
  if name not in SUITES:
    raise UnknownSuite(f"unknown ODinW suite {name!r}; known suites: {', '.join(sorted(SUITES))}")
  return SUITES[name]
