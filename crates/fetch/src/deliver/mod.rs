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
//! Between the last byte and the commit, [`Delivery::prepare`] hands the
//! destination everything short of the step that makes the message count
//! there, and returns a *receipt*: how to recognise the message later. The
//! fetch loop writes it to the state file before committing, so that a run
//! killed between the commit and the record of its UIDL can be caught up
//! by the next one (`Destination::recognise`): a Maildir answers exactly
//! (is the file in `new/` or `cur/`?), an mbox by comparing the message,
//! downloaded again, with what is at the recorded offset; a command cannot
//! answer, so the message is given to it again marked as a possible repeat
//! (`POSTOFFICE_FETCH_REPEAT=1`, with its `POSTOFFICE_FETCH_UIDL`).
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
pub(crate) use mbox::{MboxCheck, MboxDelivery};

const BUF: usize = 64 * 1024;

/// One message being delivered.
pub trait Delivery: Write + Send {
    /// Hand over everything written, short of the step that makes the
    /// message count at the destination, and return a receipt (words of
    /// printable ASCII) that the destination understands later, or
    /// `None` if the delivery cannot be recognised later. Called once,
    /// after the last write and before [`Delivery::commit`]. The default
    /// hands over nothing and has no receipt.
    fn prepare(&mut self) -> io::Result<Option<String>> {
        Ok(None)
    }
    /// Finish the message and make it durable. Only after `Ok` may the
    /// message be deleted from the server.
    fn commit(self: Box<Self>) -> io::Result<()>;
    /// Give up: remove every trace of the partial message.
    fn abort(self: Box<Self>);
}

/// What a destination can tell about a delivery an interrupted run began
/// ([`Destination::recognise`]).
pub(crate) enum Recognition {
    /// The message is there.
    Delivered,
    /// It is not (or the receipt is for another destination).
    Absent,
    /// Download the message into this check and ask it.
    Compare(MboxCheck),
    /// The destination cannot tell (a command).
    Unknown,
}

/// About the message a delivery is for, for a command's environment.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MessageInfo<'a> {
    /// The account's name.
    pub(crate) account: &'a str,
    /// The message's UIDL, when the server has UIDL.
    pub(crate) uid: Option<&'a str>,
    /// An earlier run handed this message to the command whole and was
    /// interrupted before it learnt the command's exit status.
    pub(crate) repeat: bool,
}

impl Destination {
    /// Start delivering one message.
    pub fn begin(&self) -> io::Result<Box<dyn Delivery>> {
        self.begin_message(&MessageInfo::default())
    }

    /// Start delivering one message; a command gets `info` in its
    /// environment (`POSTOFFICE_FETCH_ACCOUNT`, `POSTOFFICE_FETCH_UIDL`,
    /// `POSTOFFICE_FETCH_REPEAT=1`).
    pub(crate) fn begin_message(&self, info: &MessageInfo<'_>) -> io::Result<Box<dyn Delivery>> {
        Ok(match self {
            Destination::Maildir(root) => Box::new(MaildirDelivery::begin(root)?),
            Destination::Mbox(path) => Box::new(MboxDelivery::begin(path, SystemTime::now())?),
            Destination::Command(cmd) => Box::new(CommandDelivery::begin(cmd, info)?),
            Destination::Custom(c) => c.0.begin(info.uid)?,
        })
    }

    /// Whether this destination can tell by itself whether a delivery
    /// finished ([`Destination::recognise`] never says `Unknown`).
    pub(crate) fn answers_for_itself(&self) -> bool {
        !matches!(self, Destination::Command(_))
    }

    /// Whether the delivery behind `receipt` (from [`Delivery::prepare`],
    /// written down by an interrupted run) reached this destination.
    pub(crate) fn recognise(&self, receipt: &str) -> Recognition {
        let words: Vec<&str> = receipt.split(' ').collect();
        match (self, words.as_slice()) {
            (Destination::Maildir(root), ["maildir", name]) => {
                if maildir::holds(root, name) {
                    Recognition::Delivered
                } else {
                    Recognition::Absent
                }
            }
            (Destination::Mbox(path), ["mbox", dev, ino, offset]) => {
                match (dev.parse(), ino.parse(), offset.parse()) {
                    (Ok(dev), Ok(ino), Ok(offset)) => match MboxCheck::open(path, dev, ino, offset)
                    {
                        Some(check) => Recognition::Compare(check),
                        None => Recognition::Absent,
                    },
                    _ => Recognition::Absent,
                }
            }
            (Destination::Command(_), ["command"]) => Recognition::Unknown,
            (Destination::Custom(c), _) => match c.0.holds(receipt) {
                Ok(true) => Recognition::Delivered,
                Ok(false) => Recognition::Absent,
                Err(_) => Recognition::Unknown,
            },
            _ => Recognition::Absent,
        }
    }

    /// Short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Destination::Maildir(p) => format!("maildir {}", p.display()),
            Destination::Mbox(p) => format!("mbox {}", p.display()),
            Destination::Command(c) => format!("command {c:?}"),
            Destination::Custom(c) => c.0.describe(),
        }
    }
}

/// A destination implemented outside this crate ([`Destination::Custom`]).
/// It gets the same guarantees as the built-in ones: its [`Delivery`]'s
/// `prepare` returns a receipt, which the run writes to the state file
/// before `commit`; after an interrupted run, [`Sink::holds`] says whether
/// that commit happened.
pub trait Sink: Send + Sync {
    /// Start delivering one message (its UIDL at the server, if known).
    fn begin(&self, uid: Option<&str>) -> io::Result<Box<dyn Delivery>>;
    /// Whether the delivery behind `receipt` (from its `prepare`) is at the
    /// destination. An error means "cannot tell": the message is then
    /// delivered again (a possible duplicate, never a loss).
    fn holds(&self, receipt: &str) -> io::Result<bool>;
    /// Short description for messages.
    fn describe(&self) -> String;
}

/// A [`Sink`] as a [`Destination`]: equal only to itself.
#[derive(Clone)]
pub struct CustomDestination(pub std::sync::Arc<dyn Sink>);

impl std::fmt::Debug for CustomDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CustomDestination")
            .field(&self.0.describe())
            .finish()
    }
}

impl PartialEq for CustomDestination {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CustomDestination {}
