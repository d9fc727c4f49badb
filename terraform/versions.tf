# Rendered by `labctl terraform render` from ../clusters.json. Do not edit: change clusters.json and render again;
# `labctl terraform check` fails while this folder differs from what clusters.json renders.

terraform {
  required_version = ">= 1.4"
}
