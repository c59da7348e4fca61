//! Live and recently ended agent sessions (in memory).

pub mod exec_link;
pub mod history;
pub mod hostname;
pub mod registry;
pub mod ring;
pub mod session;

pub use exec_link::{not_started, ExecLink, ExecUpdate};
pub use registry::Registry;
pub use session::{AgentInfo, ControlItem, ControlSender, Move, Session, SHUTDOWN_REASON};
