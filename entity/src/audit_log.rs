//! `audit_logs`: one row per management change (SPEC §4.2), written in the change's
//! transaction.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_logs")]
pub struct Model {
    /// UUIDv7, so ids sort by time on every database.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub at: DateTimeUtc,
    /// `master_key`, `jwt:<user_id>` or `system:auto_register`.
    pub actor: String,
    /// `key.generate`, `team.update`, `upstream.drain`, …
    pub action: String,
    /// `key`, `team`, `mapping` or `upstream`.
    pub object_type: String,
    pub object_id: String,
    /// The team the object belongs to (what team admins are shown by); null for none.
    pub team_id: Option<String>,
    /// The object before the change, as JSON the API shows; null for a create.
    pub before: Option<String>,
    /// The object after the change, as JSON the API shows; null for a delete.
    pub after: Option<String>,
    /// The `X-Request-ID` of the request that made the change.
    pub request_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
