//! The short-lived subcommands: `status` and `flows` (read the running controller's API),
//! `quota` (its usage file), `down` (removes what a controller that did not exit cleanly left).
pub mod down;
pub mod quota;
pub mod show;
