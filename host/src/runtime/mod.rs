//! Running the policy component: the engine and linker (built once), the active component +
//! configuration (swappable), and the per-request store.

mod answer;
pub mod component;
mod drive;
pub mod engine;
pub mod gateway;
mod handle;
mod invoke;
pub mod pool;
pub mod precompiled;
pub mod reload;
mod reuse;
pub mod state;
mod trial;

pub use component::{CompiledGuest, GuestSource};
pub use gateway::{Active, Gateway};
