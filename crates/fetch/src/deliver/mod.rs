//! Local delivery: Maildir, mbox (mboxrd) and a command.
//!
//! Every destination receives the message as a stream of chunks (never the
//! whole message), with CRLF line ends turned into LF (the Unix convention
//! of all three). [`Delivery::commit`] returns only once the message is
//! durable: fsynced and renamed into `new/` (Maildir), fsynced in the mbox,
//! or accepted by the command with exit status 0. Until then nothing may be
//! deleted on the server, and [`Delivery::abort`] (or dropping the
//! delivery) leaves no trace of it.
//!
//! One file per job: this one holds the [`Delivery`] trait and
//! [`Destination::begin`]; `maildir`, `mbox` (with its dotlock) and
//! `command` are the three destinations; `transcode` holds the writers
//! they stream through (CRLF to LF, mboxrd `From ` quoting).

use std::io::{self, Write};
use std::time::SystemTime;

use crate::config::Destination;

/// `Write` for a delivery that streams into `self.writer` until it is
/// committed or rolled back (then `None`: writing is an error).
macro_rules! write_through_writer {
    ($($t:ty),+) => {$(
        impl std::io::Write for $t {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                match &mut self.writer {
                    Some(w) => std::io::Write::write(w, buf),
                    None => Err(std::io::Error::other("delivery already finished")),
                }
            }
            fn flush(&mut self) -> std::io::Result<()> {
                match &mut self.writer {
                    Some(w) => std::io::Write::flush(w),
                    None => Ok(()),
                }
            }
        }
    )+};
}

mod command;
mod maildir;
mod mbox;
mod transcode;

pub(crate) use command::CommandDelivery;
pub use maildir::MaildirDelivery;
pub(crate) use mbox::MboxDelivery;

const BUF: usize = 64 * 1024;

/// One message being delivered.
pub trait Delivery: Write + Send {
    /// Finish the message and make it durable. Only after `Ok` may the
    /// message be deleted from the server.
    fn commit(self: Box<Self>) -> io::Result<()>;
    /// Give up: remove every trace of the partial message.
    fn abort(self: Box<Self>);
}

impl Destination {
    /// Start delivering one message.
    pub fn begin(&self) -> io::Result<Box<dyn Delivery>> {
        Ok(match self {
            Destination::Maildir(root) => Box::new(MaildirDelivery::begin(root)?),
            Destination::Mbox(path) => Box::new(MboxDelivery::begin(path, SystemTime::now())?),
            Destination::Command(cmd) => Box::new(CommandDelivery::begin(cmd)?),
        })
    }

    /// Short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Destination::Maildir(p) => format!("maildir {}", p.display()),
            Destination::Mbox(p) => format!("mbox {}", p.display()),
            Destination::Command(c) => format!("command {c:?}"),
        }
    }
}
